"""The fp8 one-row GEMV behind quant_linear.py's decode at batch 1: x quantized to e4m3 inside
the launch, split sums fused, and SwiGLU's down projection with its activation and row scale.

One row of x against fp8 weights (`_fp8_row_kernel`), on CUDA cores ("fma") or on fp8 tensor
cores ("swap", the weight as the MMA's row operand): every program finds the row's e4m3 scale
itself, so a one-row fp8 linear is one launch instead of two and x's codes never go to memory.
More rows, and the "dot" candidate, quantize in a launch of their own and take quant_gemv.py's
`_channel_kernel`. Tiles are quant_tuning.py's choice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import jit_keys, pdl
from runtime_service.model.kernels.gemv import (GemvConfig, _silu_mul, grid_launcher,
                                                load_k_tiles)
from runtime_service.model.kernels.quant_convert import FP8_MAX, quantize_rows_fp8
from runtime_service.model.kernels.quant_gemv import (_sum_splits_when_last, finish_launch,
                                                      launch_channel, split_counters)


@jit_keys.helper
@triton.jit
def _row_fp8_scale(X, K, X_BLOCK: tl.constexpr, GATED: tl.constexpr):
    """The e4m3 scale of one row of x, max(amax|x| / 448, 1e-12), as quant_convert's
    `_quantize_rows_kernel` computes it (the same IEEE division), found by a program that needs
    it: x is 8-28 KB and stays in L2. GATED: x is [gate | up] and the row is silu(gate) * up,
    rounded as the activation kernel rounds it."""
    offs_x = tl.arange(0, X_BLOCK)
    amax = tl.zeros((X_BLOCK,), tl.float32)
    for k in range(0, K, X_BLOCK):
        x = tl.load(X + k + offs_x, mask=k + offs_x < K, other=0.0)
        if GATED:
            x = _silu_mul(x, tl.load(X + K + k + offs_x, mask=k + offs_x < K, other=0.0))
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    return tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), FP8_MAX), 1e-12)


@jit_keys.helper
@triton.jit
def _scale_of_block_maxima(Amax, num_amax, AMAX_BLOCK: tl.constexpr):
    """`_row_fp8_scale` of a GATED row from the maxima of |silu(gate) * up| over its column
    blocks, which the gate_up launch left (`_gate_amax_when_paired`): a maximum is the same
    whatever the grouping, so the same scale, from one load of a few hundred bytes instead of
    the whole [gate | up] row."""
    offs = tl.arange(0, AMAX_BLOCK)
    amax = tl.max(tl.load(Amax + offs, mask=offs < num_amax, other=0.0), axis=0)
    return tl.maximum(tl.math.div_rn(amax, FP8_MAX), 1e-12)


@triton.jit
def _gate_amax_when_paired(Y, Pairs, Amax, pid_n, N, BLOCK_N: tl.constexpr):
    """SwiGLU's gate_up projection (N = 2I, [gate | up], I a multiple of BLOCK_N), after column
    block pid_n's final values are in Y: gate block j and up block j (pid_n = j or I / BLOCK_N +
    j) count themselves in at Pairs[j], and the second to come reads both halves back from L2
    and stores max |silu(gate) * up| over the block, rounded as the activation kernel rounds it,
    at Amax[j], then sets Pairs[j] back to zero. The ordering is `_sum_splits_when_last`'s."""
    half = N // 2
    j = pid_n % (half // BLOCK_N)
    tl.debug_barrier()                  # every thread's final values, before the count
    if tl.atomic_add(Pairs + j, 1, sem="acq_rel", scope="gpu") == 1:
        offs = j * BLOCK_N + tl.arange(0, BLOCK_N)
        act = _silu_mul(tl.load(Y + offs, cache_modifier=".cg"),
                        tl.load(Y + half + offs, cache_modifier=".cg"))
        tl.store(Amax + j, tl.max(tl.abs(act.to(tl.float32)), axis=0))
        tl.store(Pairs + j, 0)


@triton.jit(do_not_specialize=["N", "SPLIT_K", "num_amax"])
def _fp8_row_kernel(X, QW, Scales, Bias, Out, Final, Counters, Pairs, Amax, N, K, k_per_split,
                    SPLIT_K, num_amax, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, X_BLOCK: tl.constexpr,
                    EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr, TENSOR_CORES: tl.constexpr,
                    FUSED_SUM: tl.constexpr, GATE_AMAX: tl.constexpr, AMAX_GIVEN: tl.constexpr,
                    AMAX_BLOCK: tl.constexpr):
    """One row of x against fp8 weights, with the row's e4m3 quantization inside: every program
    finds the row's scale itself (`_row_fp8_scale`), so a one-row fp8 linear is one launch
    instead of two and x's codes never go to memory. The codes are those of
    `_quantize_rows_kernel` (same IEEE division and rounding).

    CUDA cores ("fma", TENSOR_CORES False): products sum in float32, each weight widened first
    (about 4 instructions per weight byte in run 18's SASS). Tensor cores ("swap"): the weight
    tile is the fp8 MMA's row operand, straight from shared memory, and the row's codes,
    repeated to the MMA's 16-column minimum, its column operand, so no instruction converts a
    weight (about 1 per byte); each K tile's products are summed into the float32 total on
    their own, so the tensor cores' reduced-precision fp8 accumulation spans one tile.

    FUSED_SUM (split K): the column block's last program sums the splits
    (`_sum_splits_when_last`).

    GATED (SwiGLU's down projection): x is [gate | up], 2K wide, and the row is silu(gate) * up
    as `gemv._silu_mul` rounds it, the activation kernel's rounding: the same bits as
    activation.py's launch followed by this kernel, in one launch.

    GATE_AMAX (the gate_up projection before a GATED one): the launch also leaves the maxima
    of |silu(gate) * up| per column block in Amax (`_gate_amax_when_paired`). AMAX_GIVEN (the
    GATED one after it): the row's scale comes from those num_amax maxima instead of a pass
    over the 2K-wide row (5.1 us of a 29.8 us down projection, bench/NOTES.md run 25c)."""
    pdl.await_previous_kernel()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    if AMAX_GIVEN:
        x_scale = _scale_of_block_maxima(Amax, num_amax, AMAX_BLOCK)
    else:
        x_scale = _row_fp8_scale(X, K, X_BLOCK, GATED)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = QW + w_rows[:, None] * K + k_start + offs_k[None, :]
    x_ptrs = X + k_start + offs_k
    ACC_COLS: tl.constexpr = 16 if TENSOR_CORES else BLOCK_K
    acc = tl.zeros((BLOCK_N, ACC_COLS), tl.float32)
    for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        w, xk = load_k_tiles(w_ptrs, x_ptrs, k, offs_k, K, EVEN_K, GATED)
        xq = tl.math.div_rn(xk.to(tl.float32), x_scale).to(QW.dtype.element_ty)
        if TENSOR_CORES:
            acc += tl.dot(w, tl.trans(tl.broadcast_to(xq[None, :], (16, BLOCK_K))))
        else:
            acc += w.to(tl.float32) * xq.to(tl.float32)[None, :]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if TENSOR_CORES:        # the 16 columns are the same row: take the first
        y = tl.sum(tl.where(tl.arange(0, 16)[None, :] == 0, acc, 0.0), axis=1)
    else:
        y = tl.sum(acc, axis=1)
    y = y * (tl.load(Scales + w_rows) * x_scale)
    if FUSED_SUM:
        last = _sum_splits_when_last(y, Out, Final, Bias, Counters, pid_n, cols, cols, cols < N,
                                     N, pid_k, SPLIT_K, HAS_BIAS)
        if GATE_AMAX:
            if last:
                _gate_amax_when_paired(Final, Pairs, Amax, pid_n, N, BLOCK_N)
    else:
        if HAS_BIAS:
            y += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)
        tl.store(Out + pid_k * N + cols, y.to(Out.dtype.element_ty), mask=cols < N)
        if GATE_AMAX:                   # unsplit: these are the final values
            _gate_amax_when_paired(Out, Pairs, Amax, pid_n, N, BLOCK_N)


# ---- launchers (inputs already checked by quant_linear.py) ------------------------------------

def launch_fp8(x, qweight, scales, bias, config: GemvConfig, warmup: bool = False,
               gated: bool = False, gate_amax: torch.Tensor | None = None):
    """An fp8 linear of a few rows from x in the engine dtype: one of the fused one-row
    kernels ("fma" on CUDA cores, "swap" on fp8 tensor cores), or the rows quantized by
    `quantize_rows_fp8` and then `_channel_kernel` ("dot"). `gated`: x is [gate | up] and the
    linear's input silu(gate) * up (every kernel forms it as it reads x: the fused ones, or
    the quantizing launch of "dot"); `gate_amax`, where `launch_fp8_gate_up` gave it for this
    x, takes the fused kernels' row scale from its block maxima."""
    if config.kind == "dot":
        xq, x_scales = quantize_rows_fp8(x, warmup, gated)
        return launch_channel(xq, x_scales, qweight, scales, bias, x.dtype, config, warmup)
    launch, n_blocks = _fp8_row_launch(x, qweight, scales, config, warmup, gated,
                                       amax=gate_amax if gated else None)
    return finish_launch(x, bias, x.dtype, qweight.shape[0], config, launch, warmup, n_blocks)


def launch_fp8_gate_up(x, qweight, scales, bias, config: GemvConfig, warmup: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`launch_fp8` of SwiGLU's [gate | up] projection, with the maxima of |silu(gate) * up|
    per column block from the same launch for the down projection's row scale (None where
    the config cannot give them: see `gives_gate_amax`, or no counters to spare)."""
    n = qweight.shape[0]
    if not gives_gate_amax(config, n):
        return launch_fp8(x, qweight, scales, bias, config, warmup), None
    n_blocks = triton.cdiv(n, config.block_n)
    counters = split_counters(x.device, 2 * n_blocks)      # the splits', then the pairs'
    if counters is None:
        return launch_fp8(x, qweight, scales, bias, config, warmup), None
    amax = torch.empty(n_blocks // 2, dtype=torch.float32, device=x.device)
    launch, _ = _fp8_row_launch(x, qweight, scales, config, warmup, False, amax=amax,
                                pairs=counters[n_blocks:])
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    if config.split_k == 1:
        launch(out, bias, None, None)
    else:
        partials = torch.empty((config.split_k, 1, n), dtype=torch.float32, device=x.device)
        launch(partials, bias, out, counters)
    return out, amax


def gives_gate_amax(config: GemvConfig, n: int) -> bool:
    """Whether a one-row fp8 tile can leave a gate_up projection's block maxima: a fused kernel
    whose launch writes the final values itself (unsplit, or its split sums fused), with column
    blocks that never straddle the gate / up boundary."""
    return (config.kind != "dot" and (config.split_k == 1 or config.fused_sum)
            and n % 2 == 0 and (n // 2) % config.block_n == 0)


def _fp8_row_launch(x, qweight, scales, config: GemvConfig, warmup: bool, gated: bool,
                    amax: torch.Tensor | None = None, pairs: torch.Tensor | None = None):
    """`launch(target, fused_bias, final, counters)` for `_fp8_row_kernel` and its column
    blocks' count. With `pairs` the launch writes block maxima to `amax` (GATE_AMAX); without,
    a given `amax` is read for the row scale (AMAX_GIVEN)."""
    if x.shape[0] != 1:
        raise ValueError(f"the fused fp8 kernels take one row, got {x.shape[0]}")
    n, k = qweight.shape
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), config.split_k) * config.block_k
    n_blocks = triton.cdiv(n, config.block_n)
    num_amax = 0 if amax is None else amax.numel()

    def launch(target, fused_bias, final, counters):
        grid_launcher(_fp8_row_kernel, (n_blocks, config.split_k), warmup)(
            x, qweight, scales, fused_bias, target, final, counters, pairs, amax, n, k,
            k_per_split, config.split_k, num_amax, HAS_BIAS=fused_bias is not None,
            GATED=gated, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
            X_BLOCK=row_scale_block(k, config.num_warps), EVEN_K=k % config.block_k == 0,
            NUM_STAGES=config.num_stages, TENSOR_CORES=config.kind == "swap",
            FUSED_SUM=final is not None, GATE_AMAX=pairs is not None,
            AMAX_GIVEN=amax is not None and pairs is None,
            AMAX_BLOCK=triton.next_power_of_2(max(num_amax, 1)), num_warps=config.num_warps)

    return launch, n_blocks


def row_scale_block(k: int, num_warps: int) -> int:
    """How much of x each pass of `_row_fp8_scale` reads: 32 values a thread (four 16-byte
    loads in flight together), at least 2048. Every program of a fused fp8 launch waits for the
    row's scale before its first weight load (offline SASS: 229 instructions, three barriers),
    and each pass is one L2 round trip: at 4 warps a 4096-wide row now takes one pass instead of
    two and a 14336-wide one four instead of seven. 64 a thread split the loads in two groups
    and kept an fp32 maximum of 64 registers a thread alive."""
    return min(max(2048, 1024 * num_warps), triton.next_power_of_2(k))
