"""A request's life inside the process: requests, sequences, the scheduler, the KV block
manager, stopping, beams, detokenizing, validation and the executor's step loop.

Pure Python except the executor, which owns the model runner, and beam search, which ranks the
model's log-prob rows as tensors (tests/unit/test_import_layers.py holds this).
"""
