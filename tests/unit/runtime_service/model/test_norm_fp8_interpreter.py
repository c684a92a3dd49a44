"""The norms' fp8 output (`rms_norm` / `add_rms_norm` with `to_fp8`) on Triton's interpreter: the
codes and scales that the quantizing kernel gives for the norm's own 16-bit output, over ragged
widths and in fp16 and bf16; the residual sum unchanged. Against the plain-torch quantization
only the scales: the interpreter's float32 -> e4m3 cast rounds some values just under a power of
two down a binade (127.2 -> 64), so its codes are tests/gpu's (test_fused_norm.py)."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
from runtime_service.model.kernels.quant_convert import quantize_rows_fp8
from runtime_service.model.kernels.quant_linear import quantize_rows_fp8_reference
from runtime_service.model.kernels.rms_norm import add_rms_norm, rms_norm

def same_codes(codes, scales, ref_codes, ref_scales):
    return (torch.equal(scales, ref_scales)
            and torch.equal(codes.view(torch.uint8), ref_codes.view(torch.uint8)))

g = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.bfloat16):
    for rows, hidden in ((3, 100), (2, 64), (1, 33)):
        x = (torch.randn(rows, hidden, generator=g) * 3).to(dtype)
        residual = (torch.randn(rows, hidden, generator=g) * 40).to(dtype)
        weight = torch.randn(hidden, generator=g).to(dtype)
        x[:, 0] *= 50                                   # an outlier sets each row's scale
        normed, summed = add_rms_norm(x, residual, weight, 1e-5)
        codes, scales, summed_fp8 = add_rms_norm(x, residual, weight, 1e-5, to_fp8=True)
        assert torch.equal(summed_fp8, summed), (dtype, rows, hidden)
        assert same_codes(codes, scales, *quantize_rows_fp8(normed)), (dtype, rows, hidden)
        assert torch.equal(scales, quantize_rows_fp8_reference(normed)[1])
        assert codes.float().abs().max() == 448                 # the scale uses the range
        codes, scales = rms_norm(x, weight, 1e-5, to_fp8=True)
        assert same_codes(codes, scales, *quantize_rows_fp8(rms_norm(x, weight, 1e-5)))
print("ok")
"""


@needs_triton
def test_norms_quantize_their_output_as_the_quantizing_kernel_does_on_the_interpreter():
    assert run_on_interpreter(_CHECK).strip() == "ok"
