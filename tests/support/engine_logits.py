"""A builder on a local store, and the float32 logits of an engine folder through the runtime's
own model: how builder tests compare a quantized engine with the float model it came from."""

from __future__ import annotations

from pathlib import Path

import torch

from builder_service.builder import EngineBuilder
from builder_service.sources import SourceResolver
from runtime_service.model.layers.attention import AttentionMetadata
from runtime_service.model.loader import load_model
from runtime_service.store import open_store


def local_builder(tmp_path: Path) -> EngineBuilder:
    """A builder publishing to `tmp_path/store`, working in `tmp_path/w`."""
    return EngineBuilder(open_store(str(tmp_path / "store")), SourceResolver(tmp_path / "w", None),
                         tmp_path / "w")


def model_logits(model, tokens: list[int]) -> torch.Tensor:
    """Float32 logits of every position of one sequence, through the runtime's model."""
    seq = len(tokens)
    meta = AttentionMetadata(
        positions=torch.arange(seq), slot_mapping=torch.arange(seq),
        query_start=torch.tensor([0, seq], dtype=torch.int32),
        seq_lens=torch.tensor([seq], dtype=torch.int32),
        block_tables=torch.zeros(1, 1, dtype=torch.int32),
        token_seq_lens=torch.full((seq,), seq), query_lens_host=[seq], seq_lens_host=[seq],
        block_size=seq)
    args = model.args
    caches = [(torch.zeros(1, seq, args.num_kv_heads, args.head_dim),
               torch.zeros(1, seq, args.num_kv_heads, args.head_dim)) for _ in model.layer_ids]
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(tokens), meta, caches))


def folder_logits(folder: Path, tokens: list[int]) -> torch.Tensor:
    """`model_logits` of an engine or HF folder, loaded on the CPU in float32."""
    return model_logits(load_model(folder, "cpu", "float32").model, tokens)
