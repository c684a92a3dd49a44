"""An eager step's block tables are a whole number of 16-column groups wide (model_runner.layout):
the width is the attention kernels' row stride, an integer Triton specializes on divisibility
by 16, so steps of other widths would compile those kernels again while serving. Checked on CPU
through the engine: every eager step's table width, and that the tokens do not change."""

from __future__ import annotations

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.model import model_runner
from support.random_llama import make_random_llama, random_prompts


def _generate(folder, prompts):
    executor = Executor.from_folder(folder, ExecutorOptions(
        device="cpu", dtype="float32", block_size=4, max_num_tokens=64, max_batch_size=4)).start()
    try:
        params = SamplingParams(max_new_tokens=5, min_new_tokens=5, end_id=-1)
        return executor.generate([Request(f"r{i}", p, params) for i, p in enumerate(prompts)])
    finally:
        executor.shutdown()


def test_eager_tables_are_padded_to_whole_column_groups_and_tokens_hold(tmp_path, monkeypatch):
    folder = make_random_llama(tmp_path, hidden_size=64, intermediate_size=128,
                               num_attention_heads=4, num_key_value_heads=2,
                               num_hidden_layers=2, vocab_size=256)
    prompts = random_prompts((3, 9, 30), vocab_size=256)
    widths = []
    real_layout = model_runner.ModelRunner.layout

    def layout(self, batch):
        inputs = real_layout(self, batch)
        widths.append(len(inputs.block_tables[0]))
        assert all(len(row) == widths[-1] for row in inputs.block_tables)
        return inputs

    monkeypatch.setattr(model_runner.ModelRunner, "layout", layout)
    padded = _generate(folder, prompts)
    assert widths and all(w % model_runner.TABLE_COLUMNS == 0 for w in widths), widths
    monkeypatch.setattr(model_runner, "TABLE_COLUMNS", 1)     # the unpadded layout
    assert _generate(folder, prompts) == padded
