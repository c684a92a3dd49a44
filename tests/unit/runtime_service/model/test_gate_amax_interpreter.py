"""The FP8 gate_up projection's block maxima of |silu(gate) * up| (`launch_fp8_gate_up`) and the
down projection's row scale taken from them (`launch_fp8(..., gated=True, gate_amax=...)`), on
Triton's interpreter: the gate_up output is the plain launch's, the maxima are the activation's
per column block, and the down projection gives the same bits as finding its scale itself, on
both fused kernels, unsplit and with fused split sums. In float32 the scale cancels out of the
"codes", so whether the down projection really reads the maxima is tests/gpu's
(test_quant_kernels.py, where e4m3 codes and the pairs' ordering are real)."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
from runtime_service.model.kernels import fp8_row_gemv as fg
from runtime_service.model.kernels.gemv import GemvConfig

def silu_mul(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up

g = torch.Generator().manual_seed(0)
inter, k = 256, 300
x = torch.randn(1, k, generator=g)
w_gu, s_gu = torch.randn(2 * inter, k, generator=g), torch.rand(2 * inter, generator=g) + 0.5
w_d, s_d = torch.randn(96, inter, generator=g), torch.rand(96, generator=g) + 0.5
downs = [GemvConfig("swap", 64, 128, 4, 2, 1), GemvConfig("fma", 8, 128, 2, 1, 2, fused_sum=True)]
for config in (GemvConfig("swap", 64, 128, 4, 3, 1), GemvConfig("swap", 64, 128, 4, 2, 3, True),
               GemvConfig("fma", 8, 128, 2, 1, 1), GemvConfig("fma", 16, 128, 2, 1, 2, True)):
    gate_up, amax = fg.launch_fp8_gate_up(x, w_gu, s_gu, None, config)
    assert torch.equal(gate_up, fg.launch_fp8(x, w_gu, s_gu, None, config)), str(config)
    expected = silu_mul(gate_up).abs().view(-1, config.block_n).amax(dim=1)
    assert amax is not None and torch.allclose(amax, expected, rtol=1e-6), str(config)
    for down in downs:
        given = fg.launch_fp8(gate_up, w_d, s_d, None, down, gated=True, gate_amax=amax)
        found = fg.launch_fp8(gate_up, w_d, s_d, None, down, gated=True)
        assert torch.equal(given, found), (str(config), str(down))
# no maxima where a launch cannot give them: split sums in a launch of their own, blocks that
# straddle gate and up, the quantize-then-dot path
for config in (GemvConfig("swap", 64, 128, 4, 3, 3), GemvConfig("fma", 512, 128, 4, 1, 1),
               GemvConfig("dot", 64, 128, 4, 4, 1)):
    gate_up, amax = fg.launch_fp8_gate_up(x, w_gu, s_gu, None, config)
    assert amax is None and torch.equal(gate_up, fg.launch_fp8(x, w_gu, s_gu, None, config))
print("ok")
"""


@needs_triton
def test_down_projection_takes_the_gate_up_launchs_block_maxima_on_the_interpreter():
    assert run_on_interpreter(_CHECK).strip() == "ok"
