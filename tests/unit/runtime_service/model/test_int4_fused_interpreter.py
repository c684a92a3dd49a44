"""The int4 kernels' fused split sums (`quant_gemv`: FUSED_SUM) on Triton's interpreter, for the
one-row CUDA-core kernel and both tensor-core ones. The nibble
unpacking's inline PTX is replaced by the same arithmetic in Triton, as in
test_int4_dot_interpreter.py; the PTX and the GPU's ordering are tests/gpu's."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
from dataclasses import replace

import torch
import triton
import triton.language as tl
from runtime_service.model.kernels import arrival_counts
from runtime_service.model.kernels import quant_gemv as qg
from runtime_service.model.kernels import quant_linear as ql
from runtime_service.model.kernels import quant_tuning as qt
from runtime_service.model.kernels.gemv import GemvConfig


@triton.jit
def unpack_16(packed, DTYPE: tl.constexpr):
    return (packed & 15).to(tl.float32) + 128.0, (packed >> 4).to(tl.float32) + 128.0


@triton.jit
def unpack_32(packed):
    return (packed & 15).to(tl.float32) + 128.0, (packed >> 4).to(tl.float32) + 2048.0


qg._unpack_nibbles_16 = unpack_16
qg._unpack_nibbles = unpack_32
# the interpreter cannot multiply a tensor by a tl.constexpr global; the same offsets as floats
qg._LOW_OFFSET, qg._HIGH_OFFSET = 128.0, 2048.0
qg._INT4_MAGIC[torch.float32] = (0, 128.0)
g = torch.Generator().manual_seed(0)


def weight(n, k, group):
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    scales = torch.rand(n, k // group, generator=g) * 0.02 + 0.002
    zeros = torch.randint(0, 16, (n, k // group), dtype=torch.uint8, generator=g)
    packed = ql.pack_for_device("int4", {"qweight": qweight, "scales": scales, "zeros": zeros})
    return (qweight, scales, zeros), (packed["qweight"], scales, zeros)


split = [GemvConfig("fma", 16, 256, 1, 3, 3), GemvConfig("fma", 32, 128, 2, 3, 2),
         GemvConfig("dot", 32, 256, 4, 2, 2), GemvConfig("swap", 32, 128, 2, 2, 3)]
for config in split:
    for rows, n, k, group in ((1, 200, 768, 128), (3, 130, 512, 64), (20, 64, 768, 64)):
        if (k // group) % (config.block_k // group):
            continue
        contract, packed = weight(n, k, group)
        x = torch.randn(rows, k, generator=g)
        bias = torch.randn(n, generator=g)
        for b in (None, bias):
            # fused: the same bits as the split-sum launch, every counter back at zero
            fused = qg.launch_int4(x, *packed, group, b, replace(config, fused_sum=True))
            apart = qg.launch_int4(x, *packed, group, b, config)
            assert torch.equal(fused, apart), (str(config), rows, n, k)
            assert not arrival_counts._counts[x.device].any()
            ref = ql.int4_linear_reference(x, *contract, group, b)
            err = ((fused - ref).norm() / ref.norm()).item()
            # the CUDA-core kernel's 128 / 2048 offsets cancel in float32 (its docstring)
            assert err < (1e-4 if config.kind == "fma" else 1e-5), (str(config), rows, n, k, err)
candidates = qt.int4_candidates(1, 4096, 14336, 128, 132)
fused = [c for c in candidates if c.fused_sum]
assert fused and all(c.split_k > 1 for c in fused)
assert ({replace(c, fused_sum=False) for c in fused}
        == {c for c in candidates if c.split_k > 1 and not c.fused_sum})
assert not candidates[0].fused_sum
assert not any(c.fused_sum for c in qt.int4_candidates(64, 4096, 14336, 128, 132))
print("ok")
"""


@needs_triton
def test_int4_fused_split_sums_on_the_interpreter():
    assert run_on_interpreter(_CHECK).strip().endswith("ok")
