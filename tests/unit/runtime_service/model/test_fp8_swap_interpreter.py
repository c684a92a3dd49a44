"""The fp8 one-row kernel (`fp8_row_gemv._fp8_row_kernel`) on Triton's interpreter, on its
tensor-core path ("swap") and its CUDA-core path ("fma"):
in float32 its "codes" are the scaled row itself, so it must give x @ (W * scales)^T + bias to
rounding, through every tile, split and ragged K, and with x SwiGLU's [gate | up] (gated); with
its split sums fused, the same bits as the split-sum launch. Its fp8 arithmetic is tests/gpu's
(test_quant_kernels.py runs every tuning candidate against the reference)."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
from dataclasses import replace

import torch
from runtime_service.model.kernels import arrival_counts
from runtime_service.model.kernels.activation import silu_and_mul
from runtime_service.model.kernels import fp8_row_gemv as fg
from runtime_service.model.kernels import quant_tuning as qt
from runtime_service.model.kernels.gemv import GemvConfig

g = torch.Generator().manual_seed(0)
cases = [(200, 512, GemvConfig("swap", 64, 128, 4, 3, 1)),      # N past the last tile
         (200, 512, GemvConfig("swap", 64, 128, 4, 3, 3)),      # K split three ways
         (130, 300, GemvConfig("swap", 64, 128, 4, 2, 2)),      # K not a tile multiple
         (64, 256, GemvConfig("swap", 128, 256, 8, 3, 1)),      # one tile wider than N
         (130, 300, GemvConfig("fma", 8, 128, 2, 1, 2)),         # the CUDA-core path
         # rows wider than one pass of the row's scale (fg.row_scale_block), with a ragged last
         # pass (5000 values in two passes of 4096, 4500 in three of 2048): every pass's loads
         # and masks run here; in float32 the scale cancels, so its value is tests/gpu's
         (24, 5000, GemvConfig("swap", 16, 256, 4, 2, 2)),
         (24, 4500, GemvConfig("fma", 8, 512, 1, 1, 1))]
for n, k, config in cases:
    x = torch.randn(1, k, generator=g)
    w = torch.randn(n, k, generator=g)
    scales = torch.rand(n, generator=g) + 0.5
    bias = torch.randn(n, generator=g)
    out = fg.launch_fp8(x, w, scales, bias, config)
    ref = x @ (w * scales[:, None]).T + bias
    err = ((out - ref).norm() / ref.norm()).item()
    assert out.shape == (1, n) and err < 1e-5, (n, k, str(config), err)
# the split sums fused into the launch: the same numbers to the bit as the split-sum launch,
# and every counter back at zero for the next launch
for n, k, config in [(200, 512, GemvConfig("swap", 64, 128, 4, 3, 3, fused_sum=True)),
                     (130, 300, GemvConfig("fma", 8, 128, 2, 1, 2, fused_sum=True))]:
    x = torch.randn(1, k, generator=g)
    w = torch.randn(n, k, generator=g)
    scales = torch.rand(n, generator=g) + 0.5
    bias = torch.randn(n, generator=g)
    fused = fg.launch_fp8(x, w, scales, bias, config)
    apart = fg.launch_fp8(x, w, scales, bias, replace(config, fused_sum=False))
    assert torch.equal(fused, apart), (str(config), (fused - apart).abs().max().item())
    assert not arrival_counts._counts[x.device].any()
    assert torch.equal(fg.launch_fp8(x, w, scales, bias, config), fused)     # again
# gated (SwiGLU's down projection): x is [gate | up] and the linear's input silu(gate) * up,
# formed as the kernel reads x (its row scale too), through both paths, splits and ragged K
for n, k, config in [(130, 300, GemvConfig("swap", 64, 128, 4, 2, 2)),
                     (24, 4500, GemvConfig("fma", 8, 512, 1, 1, 1)),
                     (200, 512, GemvConfig("swap", 64, 128, 4, 3, 3, fused_sum=True))]:
    gate_up = torch.randn(1, 2 * k, generator=g)
    w = torch.randn(n, k, generator=g)
    scales = torch.rand(n, generator=g) + 0.5
    gate, up = gate_up.chunk(2, dim=-1)
    ref = (torch.nn.functional.silu(gate) * up) @ (w * scales[:, None]).T
    out = fg.launch_fp8(gate_up, w, scales, None, config, gated=True)
    err = ((out - ref).norm() / ref.norm()).item()
    assert out.shape == (1, n) and err < 1e-5, ("gated", n, k, str(config), err)
# "dot" quantizes x in a launch of its own, which forms silu(gate) * up when gated: the bits of
# the activation kernel's launch first, over one and several rows, in one pass of the row and
# in two (the second ragged)
config = GemvConfig("dot", 64, 128, 4, 4, 1)
for rows, k in ((1, 256), (3, 256), (3, 5000)):
    gate_up = torch.randn(rows, 2 * k, generator=g)
    w, scales = torch.randn(64, k, generator=g), torch.rand(64, generator=g) + 0.5
    assert torch.equal(fg.launch_fp8(gate_up, w, scales, None, config, gated=True),
                       fg.launch_fp8(silu_and_mul(gate_up), w, scales, None, config)), (rows, k)
candidates = qt.fp8_candidates(1, 6144, 4096, 132)
assert {c.kind for c in candidates} >= {"fma", "swap", "dot"}
assert all(c.split_k > 1 for c in candidates if c.fused_sum)
assert {(c.kind, c.block_n, c.split_k) for c in candidates if c.fused_sum} == \
    {(c.kind, c.block_n, c.split_k) for c in candidates if c.split_k > 1 and c.kind != "dot"}
assert "swap" not in {c.kind for c in qt.fp8_candidates(4, 6144, 4096, 132)}
assert [fg.row_scale_block(k, w) for k, w in [(4096, 4), (14336, 4), (14336, 8), (300, 4),
                                               (14336, 1)]] == [4096, 4096, 8192, 512, 2048]
print("ok")
"""


@needs_triton
def test_the_fp8_one_row_kernel_computes_the_linear_on_the_interpreter():
    assert run_on_interpreter(_CHECK).strip() == "ok"
