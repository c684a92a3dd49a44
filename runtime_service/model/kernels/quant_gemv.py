"""Triton kernels behind quant_linear.py: dequantizing GEMV for int4 / int8 / fp8 weights,
per-token fp8 activation quantization, and int4 dequantization for the prefill GEMM.

Decode streams the weight once per step, so a quantized linear is as fast as its bytes: int4 is a
quarter of bf16's. The kernels follow gemv.py's `_dot_kernel` (x rows padded to a tensor-core
tile, split-K with float32 partials summed by gemv's `_split_sum_kernel`, tuned per shape on
first use inside CUDA graphs with gemv's clock) and change only what the weight costs to unpack:

- int4 (`_int4_kernel`): one dot per group and nibble half. A nibble q becomes the float
  MAGIC + q by or-ing its bits into MAGIC's mantissa (bf16 128.0 = 0x4300, fp16 1024.0 =
  0x6400: both represent MAGIC + 0..15 exactly), so unpacking is an and/shift and an or per
  weight, with no int-to-float conversion (a quarter-rate instruction). The offset and the zero
  point come out once per group and row: sum_k x_k (q_k - z) s = s (dot(x, MAGIC + q)
  - (MAGIC + z) sum_k x_k). The float32 products are exact; the cancellation costs about
  2^-24 * MAGIC * |sum x|, far under the bf16 rounding of the output.
- int8 and fp8 (`_channel_kernel`): weights (and, for fp8, the quantized activations) convert to
  the dot's 16-bit type exactly, the per-channel and per-token scales multiply the float32 tile
  once at the end.
"""

from __future__ import annotations

import functools
import logging

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels.gemv import (GemvConfig, _copies_beyond_l2, _sm_count,
                                                _split_sum_kernel, graph_time_per_call_us,
                                                row_tile, split_to_fill)

log = logging.getLogger("kiln.kernels.quant_gemv")

_SUM_BLOCK = 1024
_FP8_MAX: tl.constexpr = 448.0
# (bits, value) of the float whose mantissa an int4 nibble is or-ed into, per activation dtype.
_MAGIC = {torch.bfloat16: (0x4300, 128.0), torch.float16: (0x6400, 1024.0)}


@triton.jit(do_not_specialize=["M", "N"])
def _int4_kernel(X, QW, Scales, Zeros, Bias, Out, M, N, K, stride_xm, k_per_split,
                 HAS_BIAS: tl.constexpr, MAGIC_BITS: tl.constexpr, MAGIC: tl.constexpr,
                 GROUP: tl.constexpr, GROUPS_PER_TILE: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GROUP // 2
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Padding rows and columns re-read the last real one: loads need no mask; never stored.
    x_rows = tl.minimum(rows, M - 1)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    num_groups = K // GROUP
    offs_h = tl.arange(0, HALF)
    x_base = X + x_rows[:, None] * stride_xm + 2 * offs_h[None, :]
    w_base = QW + w_rows[:, None] * (K // 2) + offs_h[None, :]
    sz_base = w_rows * num_groups
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        for g in tl.static_range(GROUPS_PER_TILE):
            k0 = k + g * GROUP
            packed = tl.load(w_base + k0 // 2)
            x_even = tl.load(x_base + k0)
            x_odd = tl.load(x_base + k0 + 1)
            w_even = ((packed & 0xF).to(tl.int16) | MAGIC_BITS).to(X.dtype.element_ty,
                                                                   bitcast=True)
            w_odd = ((packed >> 4).to(tl.int16) | MAGIC_BITS).to(X.dtype.element_ty,
                                                                 bitcast=True)
            part = tl.dot(x_even, tl.trans(w_even))
            part = tl.dot(x_odd, tl.trans(w_odd), part)
            x_sum = tl.sum(x_even.to(tl.float32) + x_odd.to(tl.float32), axis=1)
            scale = tl.load(Scales + sz_base + k0 // GROUP).to(tl.float32)
            zero = tl.load(Zeros + sz_base + k0 // GROUP).to(tl.float32)
            acc += (part - x_sum[:, None] * (MAGIC + zero)[None, :]) * scale[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out_ptrs = Out + (pid_k * M + rows[:, None]) * N + cols[None, :]
    tl.store(out_ptrs, acc.to(Out.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


@triton.jit(do_not_specialize=["M", "N"])
def _channel_kernel(X, XScale, QW, Scales, Bias, Out, M, N, K, stride_xm, k_per_split,
                    HAS_XSCALE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    EVEN_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    x_rows = tl.minimum(rows, M - 1)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + x_rows[:, None] * stride_xm + k_start + offs_k[None, :]
    w_ptrs = QW + w_rows[:, None] * K + k_start + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        if EVEN_K:
            xk = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            in_k = (k + offs_k < K)[None, :]
            xk = tl.load(x_ptrs, mask=in_k, other=0.0)
            w = tl.load(w_ptrs, mask=in_k, other=0.0)
        acc = tl.dot(xk.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc *= tl.load(Scales + w_rows)[None, :]
    if HAS_XSCALE:
        acc *= tl.load(XScale + x_rows)[:, None]
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out_ptrs = Out + (pid_k * M + rows[:, None]) * N + cols[None, :]
    tl.store(out_ptrs, acc.to(Out.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


@triton.jit
def _quantize_rows_kernel(X, XQ, XScale, K, stride_xm, BLOCK: tl.constexpr):
    """One program per row: scale = max(amax|x| / 448, 1e-12), xq = e4m3(x / scale)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), tl.float32)
    for k in range(0, K, BLOCK):
        x = tl.load(X + row * stride_xm + k + offs, mask=k + offs < K, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), _FP8_MAX), 1e-12)
    tl.store(XScale + row, scale)
    for k in range(0, K, BLOCK):
        x = tl.load(X + row * stride_xm + k + offs, mask=k + offs < K, other=0.0)
        q = tl.math.div_rn(x.to(tl.float32), scale)
        tl.store(XQ + row * K + k + offs, q.to(XQ.dtype.element_ty), mask=k + offs < K)


@triton.jit
def _dequant_int4_kernel(QW, Scales, Zeros, Out, N, K, GROUP: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Program (row block, group): w = (q - z) * s for GROUP columns of BLOCK_N rows."""
    HALF: tl.constexpr = GROUP // 2
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = rows < N
    rows = tl.minimum(rows, N - 1).to(tl.int64)
    group = tl.program_id(1)
    offs_h = tl.arange(0, HALF)
    num_groups = K // GROUP
    packed = tl.load(QW + rows[:, None] * (K // 2) + group * HALF + offs_h[None, :])
    scale = tl.load(Scales + rows * num_groups + group).to(tl.float32)[:, None]
    zero = tl.load(Zeros + rows * num_groups + group).to(tl.float32)[:, None]
    even = ((packed & 0xF).to(tl.float32) - zero) * scale
    odd = ((packed >> 4).to(tl.float32) - zero) * scale
    out = Out + rows[:, None] * K + group * GROUP + 2 * offs_h[None, :]
    tl.store(out, even.to(Out.dtype.element_ty), mask=in_n[:, None])
    tl.store(out + 1, odd.to(Out.dtype.element_ty), mask=in_n[:, None])


# ---- launchers (inputs already checked by quant_linear.py) ------------------------------------

def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 per-row scales [M]); graph-safe."""
    rows, k = x.shape
    xq = torch.empty((rows, k), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty(rows, dtype=torch.float32, device=x.device)
    _quantize_rows_kernel[(rows,)](x, xq, scales, k, x.stride(0),
                                   BLOCK=min(4096, triton.next_power_of_2(k)), num_warps=8)
    return xq, scales


def dequantize_int4(qweight, scales, zeros, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    n, k = qweight.shape[0], qweight.shape[1] * 2
    out = torch.empty((n, k), dtype=dtype, device=qweight.device)
    block_n = 16
    _dequant_int4_kernel[(triton.cdiv(n, block_n), k // group_size)](
        qweight, scales, zeros, out, n, k, GROUP=group_size, BLOCK_N=block_n, num_warps=4)
    return out


def _finish(x, bias, out_dtype, n, config: GemvConfig, launch) -> torch.Tensor:
    """Allocates the output (or the split partials), runs `launch(target, fused_bias,
    k_per_split)` and sums the splits."""
    rows = x.shape[0]
    out = torch.empty((rows, n), dtype=out_dtype, device=x.device)
    split = config.split_k
    target = out if split == 1 else torch.empty((split, rows, n), dtype=torch.float32,
                                                device=x.device)
    launch(target, bias if split == 1 else None)
    if split > 1:
        _split_sum_kernel[(triton.cdiv(n, _SUM_BLOCK), rows)](
            target, bias, out, rows, n, split, HAS_BIAS=bias is not None, BLOCK=_SUM_BLOCK,
            num_warps=4)
    return out


def launch_int4(x, qweight, scales, zeros, group_size: int, bias, config: GemvConfig):
    rows, k = x.shape
    n = qweight.shape[0]
    bits, magic = _MAGIC[x.dtype]
    groups_per_tile = config.block_k // group_size
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), config.split_k) * config.block_k
    block_m = row_tile(rows)

    def launch(target, fused_bias):
        grid = (triton.cdiv(n, config.block_n), config.split_k, triton.cdiv(rows, block_m))
        _int4_kernel[grid](x, qweight, scales, zeros, fused_bias, target, rows, n, k,
                           x.stride(0), k_per_split, HAS_BIAS=fused_bias is not None,
                           MAGIC_BITS=bits, MAGIC=magic, GROUP=group_size,
                           GROUPS_PER_TILE=groups_per_tile, BLOCK_M=block_m,
                           BLOCK_N=config.block_n, BLOCK_K=config.block_k, num_warps=config.num_warps,
                           num_stages=config.num_stages)

    return _finish(x, bias, x.dtype, n, config, launch)


def launch_channel(x, x_scales, qweight, scales, bias, out_dtype, config: GemvConfig):
    """int8 (x in the engine dtype, `x_scales` None) or fp8 (x e4m3 with per-row scales)."""
    rows, k = x.shape
    n = qweight.shape[0]
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), config.split_k) * config.block_k
    dot_dtype = tl.float16 if x.dtype == torch.float8_e4m3fn else (
        tl.bfloat16 if x.dtype == torch.bfloat16 else tl.float16)

    def launch(target, fused_bias):
        _channel_kernel[(triton.cdiv(n, config.block_n), config.split_k)](
            x, x_scales, qweight, scales, fused_bias, target, rows, n, k, x.stride(0),
            k_per_split, HAS_XSCALE=x_scales is not None, HAS_BIAS=fused_bias is not None,
            DOT_DTYPE=dot_dtype, BLOCK_M=row_tile(rows), BLOCK_N=config.block_n,
            BLOCK_K=config.block_k, EVEN_K=k % config.block_k == 0,
            num_warps=config.num_warps, num_stages=config.num_stages)

    return _finish(x, bias, out_dtype, n, config, launch)


# ---- tuning: gemv's clock over quantized weight copies ----------------------------------------

def int4_candidates(rows: int, n: int, k: int, group_size: int, sm_count: int):
    """Weight tiles of 2-16 KiB of packed bytes, as tiles whose K span is whole groups dividing
    the row (no masks), each unsplit and split to fill the GPU."""
    num_groups = k // group_size
    configs = []
    tiles = ((32, 256, 4, 3), (64, 256, 4, 3), (64, 128, 4, 4), (128, 128, 4, 3),
             (128, 256, 8, 3), (32, 512, 4, 2))
    if rows > 16:
        tiles = ((64, 128, 4, 3), (128, 128, 4, 3), (64, 256, 4, 2), (32, 256, 4, 3))
    for block_n, block_k, warps, stages in tiles:
        block_k = max(block_k, group_size)
        if num_groups % (block_k // group_size):
            block_k = group_size
        tile = GemvConfig("dot", block_n, block_k, warps, stages)
        if tile in configs:
            continue
        configs.append(tile)
        split = split_to_fill(triton.cdiv(n, block_n), k, block_k, sm_count)
        if split > 1:
            configs.append(GemvConfig("dot", block_n, block_k, warps, stages, split))
    return configs


def channel_candidates(rows: int, n: int, k: int, sm_count: int):
    """1-byte weights: tiles of 4-16 KiB, unsplit and split to fill."""
    tiles = ((64, 128, 4, 4), (32, 256, 4, 4), (128, 128, 4, 3), (64, 256, 8, 3))
    if rows > 16:
        tiles = ((64, 128, 4, 4), (128, 64, 4, 4), (64, 64, 4, 6), (128, 128, 8, 3))
    configs = []
    for block_n, block_k, warps, stages in tiles:
        configs.append(GemvConfig("dot", block_n, block_k, warps, stages))
        split = split_to_fill(triton.cdiv(n, block_n), k, block_k, sm_count)
        if split > 1:
            configs.append(GemvConfig("dot", block_n, block_k, warps, stages, split))
    return configs


_tuned: dict[tuple, GemvConfig] = {}


def tuned_config(key: tuple, x: torch.Tensor, weights: tuple, candidates: list[GemvConfig],
                 call) -> GemvConfig:
    """The fastest of `candidates` for `key`, timed on first use as gemv.py times its own:
    `call(x, weights, config)` back to back in a CUDA graph over copies of `weights` larger than
    L2. During capture or off CUDA the first candidate runs untimed."""
    config = _tuned.get(key)
    if config is not None:
        return config
    if not x.is_cuda or torch.cuda.is_current_stream_capturing():
        return candidates[0]
    largest = max(weights, key=lambda t: t.numel() * t.element_size())
    copies = [weights] + [tuple(t.clone() for t in weights)
                          for _ in range(_copies_beyond_l2(largest) - 1)]
    timings_us = {}
    for candidate in candidates:
        try:
            timings_us[candidate] = graph_time_per_call_us(
                functools.partial(_call_with, call=call, config=candidate), x, copies)
        except Exception as exc:  # noqa: BLE001 - a config this GPU cannot run is skipped
            log.warning("%s config %s failed: %r", key[0], candidate, exc)
    if not timings_us:
        raise RuntimeError(f"no {key[0]} config runs for key {key}")
    config = min(timings_us, key=timings_us.get)
    log.info("%s %s: %s, %.1f us (%d candidates)", key[0], key[3:], config, timings_us[config],
             len(timings_us))
    _tuned[key] = config
    return config


def _call_with(x, weights, call, config):
    return call(x, weights, config)


def tuned_configs() -> dict[tuple, GemvConfig]:
    return dict(_tuned)


def sm_count(device: torch.device) -> int:
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
