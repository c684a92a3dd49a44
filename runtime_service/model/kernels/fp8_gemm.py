"""FP8 GEMM for a decode batch's rows (65-512) already quantized to e4m3: Triton's fp8 tensor-core
dot beside cuBLAS's, whichever the tuner times faster per shape.

Past 64 rows an FP8 linear's rows arrive quantized (a norm formed them, or `quantize_rows_fp8`)
and meet the weight in `torch._scaled_mm`. cuBLAS picks 128 x 128 output tiles there, so a
4096-wide projection (o, down) leaves SMs idle. `_fp8_gemm_kernel` takes the row tile as a launch
choice too (64 or 128). The programs that share a weight tile are numbered together, so they run
side by side and the weight comes from HBM once. On an H100 (bench/NOTES.md, run 27a) its tiles
won on o and down at 128 rows (-28%, -14%) and on o at 256 (-9%); cuBLAS kept the rest. It also
writes fp16, which `_scaled_mm`'s row-wise path does not (an fp16 model took the float32
fallback, the whole weight dequantized per call).

Products are exact in the tensor cores and summed in their accumulators, then scaled by the row's
and the channel's scale. Hopper's fp8 MMAs sum in fewer bits than float32 unless the sums are
moved out to float32 registers every few K steps: Triton's fp8 dots never do (its default on
sm_90), and cuBLAS is asked not to either (`use_fast_accum`), as TensorRT-LLM's and vLLM's FP8
GEMMs run: that costs the promotions' instructions, which a prefill's GEMMs are bound by.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import pdl
from runtime_service.model.kernels.gemv import CUBLAS, GemvConfig, grid_launcher, load_k_tiles

# Rows this path tunes for: decode batches. Prefill chunks take cuBLAS untimed.
FP8_GEMM_ROW_LIMIT = 512


@triton.jit(do_not_specialize=["M", "N"])
def _fp8_gemm_kernel(X, XScale, W, WScale, Bias, Out, M, N, K, stride_xm,
                     HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """out[M, N] = (X[M, K] W[N, K]^T) * XScale[M, None] * WScale[None, N] (+ Bias), X and W in
    e4m3. Program p takes row block p % m_blocks of column block p // m_blocks: the row blocks
    of one weight tile are consecutive programs, so they read it from L2 after the first."""
    pdl.await_previous_kernel()
    m_blocks = tl.cdiv(M, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % m_blocks
    pid_n = pid // m_blocks
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Padding rows and columns re-read the last real one: loads need no row mask; never stored.
    x_rows = tl.minimum(rows, M - 1).to(tl.int64)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + x_rows[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = W + w_rows[:, None] * K + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(0, K, BLOCK_K):
        w, xk = load_k_tiles(w_ptrs, x_ptrs, k, offs_k, K, EVEN_K, False)
        acc = tl.dot(xk, tl.trans(w), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc = acc * tl.load(XScale + x_rows)[:, None] * tl.load(WScale + w_rows)[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out_ptrs = Out + rows[:, None].to(tl.int64) * N + cols[None, :]
    tl.store(out_ptrs, acc.to(Out.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


def fp8_gemm_candidates(rows: int, n: int, k: int, out_dtype: torch.dtype) -> list[GemvConfig]:
    """cuBLAS first (the untimed default) where its row-wise path takes the shape (a bf16
    output, N and K multiples of 16), then output tiles of 64-128 rows by 64-128 columns, K
    steps of 128-256 bytes, 3-5 stages: what fits the SM's 228 KB (a tile that does not fit a
    smaller GPU fails to launch, and its tuner passes it over). The widest tile comes first:
    where cuBLAS cannot run, it is the default (and a prefill's). The two 128 x 64 tiles on 8
    warps were the best of 87 at 256 rows on an H100 for down (32.7 us against cuBLAS's 37.4)
    and o (11.8 against 12.4); cuBLAS kept qkv and gate_up (bench/NOTES.md, run 29b)."""
    tiles = ((128, 128, 128, 8, 3), (128, 64, 256, 8, 4), (128, 64, 128, 8, 5),
             (64, 128, 128, 4, 4), (64, 64, 128, 4, 5))
    if rows <= 64:
        tiles = tuple(t for t in tiles if t[0] == 64)
    cublas = [CUBLAS] if out_dtype == torch.bfloat16 and n % 16 == 0 and k % 16 == 0 else []
    return cublas + [GemvConfig("dot", block_n, block_k, warps, stages, block_m=block_m)
                     for block_m, block_n, block_k, warps, stages in tiles]


def launch_fp8_gemm(xq: torch.Tensor, x_scales: torch.Tensor, qweight: torch.Tensor,
                    scales: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                    config: GemvConfig, warmup: bool = False) -> torch.Tensor | None:
    """Runs `config` on rows already in e4m3 (inputs checked by quant_linear.py); with
    `warmup`, compiles what it would run and returns None. "cublas" needs a bf16 output."""
    rows, k = xq.shape
    n = qweight.shape[0]
    if config.kind == "cublas":
        if warmup:
            return None
        y = torch._scaled_mm(xq, qweight.t(), scale_a=x_scales[:, None],
                             scale_b=scales[None, :], out_dtype=out_dtype, use_fast_accum=True)
        return y if bias is None else y + bias
    out = torch.empty((rows, n), dtype=out_dtype, device=xq.device)
    grid = (triton.cdiv(rows, config.block_m) * triton.cdiv(n, config.block_n),)
    grid_launcher(_fp8_gemm_kernel, grid, warmup)(
        xq, x_scales, qweight, scales, bias, out, rows, n, k, xq.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        BLOCK_K=config.block_k, EVEN_K=k % config.block_k == 0, num_warps=config.num_warps,
        num_stages=config.num_stages)
    return None if warmup else out
