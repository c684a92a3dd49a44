"""SwiGLU's silu(gate) * up over a fused gate_up projection, in one pass.

Rounds to the model dtype after silu and after the product, as the two torch ops do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import pdl


@triton.jit
def _silu_mul_kernel(X, Out, stride_x, stride_o, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    pdl.await_previous_kernel()
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < WIDTH
    gate = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + WIDTH + offs, mask=mask, other=0.0)
    act = (gate / (1.0 + tl.exp(-gate))).to(up.dtype).to(tl.float32)
    tl.store(Out + row * stride_o + offs, (act * up.to(tl.float32)).to(up.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> silu(gate) * up [T, I]."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(1) != 1:
        raise ValueError(f"expected [T, 2I] with a contiguous last dim, got {tuple(x.shape)}")
    width = x.shape[1] // 2
    out = torch.empty(x.shape[0], width, dtype=x.dtype, device=x.device)
    if x.shape[0]:
        block = min(2048, triton.next_power_of_2(width))
        _silu_mul_kernel[(x.shape[0], triton.cdiv(width, block))](
            x, out, x.stride(0), out.stride(0), WIDTH=width, BLOCK=block, num_warps=4, **pdl.LAUNCH)
    return out


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
