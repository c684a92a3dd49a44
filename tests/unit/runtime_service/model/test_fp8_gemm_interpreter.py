"""The fp8 GEMM for a decode batch's rows (`fp8_gemm._fp8_gemm_kernel`) on Triton's interpreter:
in float32 its "codes" are the rows themselves, so every tile must give
(x * x_scales) @ (W * scales)^T + bias to rounding, with ragged row, column and K tiles, which
checks the program numbering (row blocks of one weight tile together), the clamped padding rows
and the masks. Its fp8 arithmetic is tests/gpu's (test_quant_kernels.py)."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
from runtime_service.model.kernels import fp8_gemm
from runtime_service.model.kernels.gemv import GemvConfig

g = torch.Generator().manual_seed(0)
tiles = fp8_gemm.fp8_gemm_candidates(256, 200, 300, torch.bfloat16)
assert tiles and all(c.block_m for c in tiles)     # no cuBLAS: 200 and 300 are not multiples of 16
assert fp8_gemm.fp8_gemm_candidates(256, 4096, 4096, torch.bfloat16)[0].kind == "cublas"
assert fp8_gemm.fp8_gemm_candidates(256, 4096, 4096, torch.float16)[0].kind == "dot"
cases = [(70, 200, 300), (130, 64, 256), (16, 130, 128)]
for config in tiles + [GemvConfig("dot", 32, 64, 4, 2, block_m=16)]:
    for rows, n, k in cases:
        x = torch.randn(rows, k, generator=g)
        x_scales = torch.rand(rows, generator=g) + 0.5
        w = torch.randn(n, k, generator=g)
        scales = torch.rand(n, generator=g) + 0.5
        bias = torch.randn(n, generator=g)
        for b in (bias, None):
            out = fp8_gemm.launch_fp8_gemm(x, x_scales, w, scales, b, torch.float32, config)
            ref = (x * x_scales[:, None]) @ (w * scales[:, None]).T
            ref = ref if b is None else ref + b
            err = ((out - ref).norm() / ref.norm()).item()
            assert out.shape == (rows, n) and err < 1e-5, (str(config), rows, n, k, err)
assert fp8_gemm.launch_fp8_gemm(x, x_scales, w, scales, None, torch.float32, tiles[0],
                                warmup=True) is None
print("ok")
"""


@needs_triton
def test_fp8_gemm_tiles_on_the_interpreter():
    assert run_on_interpreter(_CHECK).strip().endswith("ok")
