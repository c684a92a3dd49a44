"""A Triton kernel defined at module level, for tests that compile it in another process."""

import triton
import triton.language as tl


@triton.jit
def add_one_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(Y + offs, tl.load(X + offs, mask=mask) + 1.0, mask=mask)
