"""The int4 tensor-core kernels (`quant_gemv._int4_dot_kernel` and `_int4_swap_kernel`, a warp
per slice of the weight's rows) on Triton's interpreter: their indexing, padding rows and
columns, K splits, group spans and bias. The interpreter cannot run the nibble unpacking's
inline PTX, so here it is replaced by the same arithmetic in Triton (q + 128, which the kernels'
MAGIC_VALUE offset takes back off); the PTX itself and the tensor-core dots are tests/gpu's
(test_quant_kernels.py)."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
import triton
import triton.language as tl
from runtime_service.model.kernels import quant_gemv as qg
from runtime_service.model.kernels import quant_linear as ql
from runtime_service.model.kernels.gemv import GemvConfig


@triton.jit
def unpack_in_triton(packed, DTYPE: tl.constexpr):
    return (packed & 15).to(tl.float32) + 128.0, (packed >> 4).to(tl.float32) + 128.0


qg._unpack_nibbles_16 = unpack_in_triton
qg._INT4_MAGIC[torch.float32] = (0, 128.0)
g = torch.Generator().manual_seed(0)
configs = [GemvConfig("dot", 64, 128, 4, 2), GemvConfig("dot", 32, 256, 4, 2, split_k=2),
           GemvConfig("swap", 64, 128, 4, 2), GemvConfig("swap", 32, 128, 2, 2, split_k=3),
           GemvConfig("swap", 128, 256, 8, 2), GemvConfig("swap", 128, 128, 4, 2, split_k=2)]
for config in configs:
    for rows, n, k, group in ((5, 200, 512, 128), (20, 64, 768, 64), (70, 130, 256, 128)):
        if config.block_k % group or (k // group) % (config.block_k // group):
            continue
        x = torch.randn(rows, k, generator=g)
        qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
        scales = torch.rand(n, k // group, generator=g) * 0.02 + 0.002
        zeros = torch.randint(0, 16, (n, k // group), dtype=torch.uint8, generator=g)
        packed = ql.pack_for_device("int4", {"qweight": qweight, "scales": scales, "zeros": zeros})
        bias = torch.randn(n, generator=g)
        for b in (None, bias):
            out = qg.launch_int4(x, packed["qweight"], scales, zeros, group, b, config)
            ref = ql.int4_linear_reference(x, qweight, scales, zeros, group, b)
            err = ((out - ref).norm() / ref.norm()).item()
            assert out.shape == (rows, n) and err < 1e-5, (str(config), rows, n, k, group, err)
print("ok")
"""


@needs_triton
def test_int4_dot_and_swap_tiles_on_the_interpreter():
    assert run_on_interpreter(_CHECK).strip().endswith("ok")
