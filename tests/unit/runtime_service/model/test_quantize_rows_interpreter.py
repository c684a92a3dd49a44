"""The per-row fp8 quantization (`quant_convert.quantize_rows_fp8`) on Triton's interpreter: a
row that fits one block is read once and kept in registers, a longer one is read in passes;
both must give the same codes and scales, plain and gated (SwiGLU's silu(gate) * up formed as
the row is read), over ragged widths and several rows, and the scales must be plain torch's
max(amax / 448, 1e-12) of the row. The codes' e4m3 rounding is tests/gpu's: the interpreter's
float32 -> e4m3 cast rounds some values just under a power of two down a binade."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
from runtime_service.model.kernels import quant_convert as qc
from runtime_service.model.kernels.activation import silu_and_mul

g = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.bfloat16):
    for rows, k, gated in ((3, 300, False), (2, 5000, False), (3, 300, True), (2, 4500, True),
                           (1, 64, False)):
        x = (torch.randn(rows, 2 * k if gated else k, generator=g) * 3).to(dtype)
        x[:, 7] *= 40                                   # an outlier sets each row's scale
        outs = []
        for limit in (qc.ONE_PASS_LIMIT, 1024):        # one pass; passes of up to 4096
            xq = torch.empty(rows, k, dtype=torch.float8_e4m3fn)
            scales = torch.empty(rows, dtype=torch.float32)
            qc.launch_quantize_rows(x, xq, scales, k, gated, one_pass_limit=limit)
            outs.append((xq.view(torch.uint8), scales))
        (one, one_scales), (passes, pass_scales) = outs
        assert torch.equal(one, passes) and torch.equal(one_scales, pass_scales), (
            dtype, rows, k, gated)
        row = silu_and_mul(x) if gated else x
        expected = (row.float().abs().amax(dim=1) / 448.0).clamp_min(1e-12)
        assert torch.equal(one_scales, expected), (dtype, rows, k, gated)
        xq, scales = qc.quantize_rows_fp8(x, gated=gated)
        assert torch.equal(xq.view(torch.uint8), one) and torch.equal(scales, one_scales)
print("ok")
"""


@needs_triton
def test_one_pass_and_passes_give_the_same_codes_on_the_interpreter():
    assert run_on_interpreter(_CHECK).strip().endswith("ok")
