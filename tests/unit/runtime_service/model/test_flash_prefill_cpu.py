"""Flash prefill's parts that a CPU can check: how it is chosen (the pod's flag, the options,
the backend's refusal off CUDA), and its context-merge kernel on Triton's interpreter in float32
(where Triton is installed; CI has none, the GPU machine has it). The flash kernel itself and the
engine on it are tests/gpu/test_flash_prefill.py."""

from __future__ import annotations

import argparse

import pytest

from runtime_service.engine.executor_options import ATTENTION_BACKENDS, ExecutorOptions
from runtime_service.errors import InvalidRequest
from support.triton_interpreter import needs_triton, run_on_interpreter


def test_the_pod_flag_chooses_the_backend_and_defaults_to_auto():
    from runtime_service.server.serve import add_serve_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert settings_from_args(parser.parse_args([])).executor.attention_backend == "auto"
    chosen = settings_from_args(parser.parse_args(["--attention-backend", "triton-flash"]))
    assert chosen.executor.attention_backend == "triton-flash"
    with pytest.raises(SystemExit):
        parser.parse_args(["--attention-backend", "flash"])


def test_options_take_every_backend_and_refuse_others():
    for name in ATTENTION_BACKENDS:
        assert ExecutorOptions(attention_backend=name).attention_backend == name
    with pytest.raises(InvalidRequest, match="triton-flash"):
        ExecutorOptions(attention_backend="flash")


def test_auto_takes_flash_on_hopper_only_for_head_dims_it_runs():
    from runtime_service.model.layers.attention_triton import (AUTO_FLASH_MIN_ROWS,
                                                               auto_uses_flash)

    assert auto_uses_flash((9, 0), 128) and auto_uses_flash((9, 0), 64)
    assert not auto_uses_flash((8, 0), 128) and not auto_uses_flash((10, 0), 128)
    assert not auto_uses_flash((9, 0), 100) and not auto_uses_flash((9, 0), 512)
    assert AUTO_FLASH_MIN_ROWS >= 256      # short prompts keep the paged kernel (run 20h)


def test_the_flash_backend_needs_cuda():
    from runtime_service.model.layers.attention_triton import make_attention_backend

    with pytest.raises(ValueError, match="CUDA"):
        make_attention_backend("triton-flash", 4, 2, 16, "cpu")


_MERGE_CHECK = r"""
import torch
from runtime_service.model.kernels import flash_prefill as fp
from runtime_service.model.kernels import paged_attention as pa

g = torch.Generator().manual_seed(1)
BS, H, HKV, D = 8, 4, 2, 16
seqs = [(5, 0), (70, 33), (1, 9), (16, 16)]          # (new tokens, cached context)
seq_lens = [n + c for n, c in seqs]
blocks = [-(-s // BS) for s in seq_lens]
num_blocks = sum(blocks) + 2
order = torch.randperm(num_blocks, generator=g).tolist()
table = torch.full((len(seqs), max(blocks) + 1), -1, dtype=torch.int32)
used = 0
for i, b in enumerate(blocks):
    table[i, :b] = torch.tensor(order[used:used + b])
    used += b
k = torch.randn(num_blocks, BS, HKV, D, generator=g)
v = torch.randn(num_blocks, BS, HKV, D, generator=g)
starts = [0]
for n, _ in seqs:
    starts.append(starts[-1] + n)
q = torch.randn(starts[-1], H, D, generator=g)
query_start = torch.tensor(starts, dtype=torch.int32)
lens = torch.tensor(seq_lens, dtype=torch.int32)
ref = pa.prefill_reference(q, k, v, table, query_start, lens, 0.3)
out, lse = torch.empty_like(q), torch.empty(H, starts[-1])
for i, (n, c) in enumerate(seqs):        # each sequence over its own new keys, as flash gives
    pos = torch.arange(c, c + n)
    slots = table[i, pos // BS].long() * BS + pos % BS
    rows = slice(starts[i], starts[i + 1])
    out[rows], lse[:, rows] = fp.causal_attention_reference(
        q[rows], k.flatten(0, 1)[slots], v.flatten(0, 1)[slots], 0.3)
before = out.clone()
fp.merge_context(q, k, v, table, query_start, lens, 70, 0.3, out, lse)
err = ((out - ref).norm() / ref.norm()).item()
assert err < 1e-5, err
assert torch.equal(out[0:5], before[0:5])         # no context: flash's rows are the answer
print("ok", err)
"""


@needs_triton
def test_merging_the_cached_context_gives_full_causal_attention_on_the_interpreter():
    """merge_context folds each sequence's context into rows that hold attention over its own
    new keys: the result is attention over everything (float32, so exact to rounding)."""
    assert run_on_interpreter(_MERGE_CHECK).startswith("ok")
