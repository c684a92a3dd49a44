"""Decode GEMV: y = x W^T (+ b) for a few rows of x, reading W at memory bandwidth.

At decode a linear layer sees one row per sequence, so its cost is streaming the weight once (a
7B model reads 13.5 GB per step and does almost no arithmetic on it). Two kernels, one launcher:

- `_fma_kernel`, one row of x per program: each thread multiplies its part of a
  [BLOCK_N, BLOCK_K] weight tile into float32 registers and reduces once, after the K loop. It
  reads W once per row of x, so it is a candidate only for a single row.
- `_dot_kernel`: the rows of x, padded to a power of two of at least 16 (up to 64, a decode
  graph's batch), meet the weight tile in a tensor-core dot, so all rows share one read of W.
- cuBLAS, timed beside them: on an H100 it wins some shapes at 2-4 rows (bench/NOTES.md).

With `gated=True` x is a SwiGLU gate_up projection [M, 2K] = [gate | up] and the kernels read
silu(gate) * up as their input row, computed per K tile with the roundings of activation.py's
`_silu_mul_kernel`: the down projection then needs no activation launch of its own, and its
result equals `gemv(silu_and_mul(x), weight)` bit for bit under the same config.

Both read W along K in 16-byte vectors through a `num_stages`-deep pipeline. Split-K gives the
narrow projections (N = 4096: o_proj, down_proj) enough programs to fill the GPU: each split
writes float32 partial sums to a workspace and `_split_sum_kernel` adds them in a fixed order,
adds the bias and casts. No atomics: results are deterministic and no buffer needs zeroing.

`gemv` tunes a config per (device, dtype, rows rounded up to a power of two, N, K, gated) on
first use, timing each candidate inside a CUDA graph over weight copies larger than L2. That
first call must come before CUDA-graph capture (the decode graphs' warm-up passes make it); a
first call during capture, or off CUDA (the Triton interpreter), runs `default_config` untimed.
Tuning an 8B model's shapes takes seconds of every start, so the choices leave and come back as
plain records (`export_tuned` / `import_tuned`, without the device): the pod keeps them per
engine and GPU model, and a second start on that GPU model times nothing. A shape's candidates
compile together before they are timed (tuning_clock.py, which also holds the clock: in the
compile workers where the pod runs them, else on a thread pool).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, replace

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import compile_ahead, pdl
from runtime_service.model.kernels import GEMV_ROW_LIMIT
from runtime_service.model.kernels.tuning_clock import (copies_beyond_l2, fastest,
                                                        graph_time_per_call_us, precompile,
                                                        sm_count)

log = logging.getLogger("kiln.kernels.gemv")

MAX_ROWS = GEMV_ROW_LIMIT   # the dot kernel's largest row tile; more rows are a GEMM's job
_SUM_BLOCK = 1024
_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit
def _silu_mul(gate, up):
    """silu(gate) * up, rounded to up's dtype after silu and after the product, exactly as
    activation.py's `_silu_mul_kernel` rounds (the gated GEMV's bit-identity rests on it)."""
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(up.dtype).to(tl.float32)
    return (act * up.to(tl.float32)).to(up.dtype)


@triton.jit
def load_k_tiles(w_ptrs, x_ptrs, k, offs_k, K, EVEN_K: tl.constexpr, GATED: tl.constexpr):
    """The K tile at column k of the weight rows [N, BLOCK_K] and of x, one row [BLOCK_K] or
    rows [M, BLOCK_K]: masked past K unless EVEN_K (the mask broadcasts over the rows), and with
    GATED (x is [gate | up], up K further on) silu(gate) * up. Every GEMV and dot kernel's loop
    loads through it."""
    if EVEN_K:
        w = tl.load(w_ptrs)
        xk = tl.load(x_ptrs)
        if GATED:
            xk = _silu_mul(xk, tl.load(x_ptrs + K))
    else:
        in_k = k + offs_k < K
        w = tl.load(w_ptrs, mask=in_k, other=0.0)
        xk = tl.load(x_ptrs, mask=in_k, other=0.0)
        if GATED:
            xk = _silu_mul(xk, tl.load(x_ptrs + K, mask=in_k, other=0.0))
    return w, xk


@triton.jit(do_not_specialize=["M", "N"])
def _fma_kernel(X, W, Bias, Out, M, N, K, stride_xm, k_per_split, HAS_BIAS: tl.constexpr,
                GATED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr):
    pdl.await_previous_kernel()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Columns past N re-read the last row of W: every load stays in bounds without a mask, and
    # those outputs are never stored.
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = W + w_rows[:, None] * K + k_start + offs_k[None, :]
    x_ptrs = X + row * stride_xm + k_start + offs_k
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    # An explicit num_stages lets Triton pipeline loads that feed no dot.
    for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        w, xk = load_k_tiles(w_ptrs, x_ptrs, k, offs_k, K, EVEN_K, GATED)
        acc += w.to(tl.float32) * xk.to(tl.float32)[None, :]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(Out + (pid_k * M + row) * N + cols, y.to(Out.dtype.element_ty), mask=cols < N)


@triton.jit(do_not_specialize=["M", "N"])
def _dot_kernel(X, W, Bias, Out, M, N, K, stride_xm, k_per_split, HAS_BIAS: tl.constexpr,
                GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    pdl.await_previous_kernel()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Padding rows and columns re-read the last real one (loads need no mask on M or N); their
    # results are never stored.
    x_rows = tl.minimum(rows, M - 1)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + x_rows[:, None] * stride_xm + k_start + offs_k[None, :]
    w_ptrs = W + w_rows[:, None] * K + k_start + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        w, xk = load_k_tiles(w_ptrs, x_ptrs, k, offs_k, K, EVEN_K, GATED)
        acc = tl.dot(xk, tl.trans(w), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out_ptrs = Out + (pid_k * M + rows[:, None]) * N + cols[None, :]
    tl.store(out_ptrs, acc.to(Out.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


@triton.jit(do_not_specialize=["M", "N", "SPLIT_K"])
def _split_sum_kernel(Partial, Bias, Out, M, N, SPLIT_K, HAS_BIAS: tl.constexpr,
                      BLOCK: tl.constexpr):
    pdl.await_previous_kernel()
    row = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_n = cols < N
    acc = tl.zeros((BLOCK,), tl.float32)
    for split in range(SPLIT_K):
        acc += tl.load(Partial + (split * M + row) * N + cols, mask=in_n, other=0.0)
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=in_n, other=0.0).to(tl.float32)
    tl.store(Out + row * N + cols, acc.to(Out.dtype.element_ty), mask=in_n)


@dataclass(frozen=True)
class GemvConfig:
    """One launch shape: `kind` "fma" (CUDA cores), "dot" (tensor cores, x's rows as the
    MMA's rows) or "swap" (tensor cores, the weight's rows as the MMA's rows: fp8 at one row,
    int4 at 2-32), the weight tile [block_n, block_k], warps and pipeline depth per program,
    how many K splits, and for the kernels that tile rows too (fp8_gemm.py) the row tile
    `block_m`."""

    kind: str
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1
    split_k: int = 1
    # The last program of each column block sums the K splits itself (fp8_row_gemv's one-row
    # kernel), instead of a second launch.
    fused_sum: bool = False
    # 0: all rows in one tile (gemv's `row_tile`); else the row tile of a kernel with a row grid
    block_m: int = 0

    def __post_init__(self):
        if self.kind not in ("fma", "dot", "swap", "cublas"):
            raise ValueError(f"kind must be 'fma', 'dot', 'swap' or 'cublas', got {self.kind!r}")
        if self.kind == "cublas":
            return
        smallest = 1 if self.kind == "fma" else 16
        for name in ("block_n", "block_k"):
            value = getattr(self, name)
            if value < smallest or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= {smallest} for {self.kind}, "
                                 f"got {value}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages must be in 1..8, got {self.num_stages}")
        if not 1 <= self.split_k <= 64:
            raise ValueError(f"split_k must be in 1..64, got {self.split_k}")
        if self.fused_sum and self.split_k == 1:
            raise ValueError("fused_sum sums K splits: it needs split_k > 1")
        if self.block_m and (self.block_m < 16 or self.block_m & (self.block_m - 1)):
            raise ValueError(f"block_m must be 0 or a power of two >= 16, got {self.block_m}")

    def __str__(self) -> str:
        if self.kind == "cublas":
            return "cublas"
        return (f"{self.kind} {f'm{self.block_m} ' if self.block_m else ''}n{self.block_n} "
                f"k{self.block_k} w{self.num_warps} s{self.num_stages} split{self.split_k}"
                f"{' fused' if self.fused_sum else ''}")


# Weight tiles of 8-32 KiB per pipeline stage: enough bytes in flight per SM to cover HBM
# latency at a few programs per SM, few enough registers to keep those programs resident.
# K = 11008 (Llama-2's down projection) is a multiple of 256 but not of 512: the 256-wide tiles
# run it without masks.
_FMA_TILES = (GemvConfig("fma", 8, 512, 4, 1), GemvConfig("fma", 16, 512, 4, 1),
              GemvConfig("fma", 4, 256, 4, 1), GemvConfig("fma", 8, 256, 4, 1),
              GemvConfig("fma", 8, 256, 4, 3),
              GemvConfig("fma", 16, 256, 4, 3), GemvConfig("fma", 32, 256, 8, 3))
# cuBLAS itself is a candidate, so a shape where no tile beats it keeps cuBLAS.
CUBLAS = GemvConfig("cublas", 1, 1)
_DOT_TILES = (GemvConfig("dot", 64, 128, 4, 4), GemvConfig("dot", 32, 256, 4, 4),
              GemvConfig("dot", 128, 128, 4, 3), GemvConfig("dot", 64, 256, 8, 3))
# Past 16 rows the x tile grows to 32-64 rows, so the weight tiles shrink along K to keep a
# stage of x plus W near 32 KiB of shared memory.
_WIDE_DOT_TILES = (GemvConfig("dot", 64, 128, 4, 4), GemvConfig("dot", 128, 64, 4, 4),
                   GemvConfig("dot", 64, 64, 4, 6), GemvConfig("dot", 32, 128, 4, 5),
                   GemvConfig("dot", 128, 128, 8, 3))


def split_to_fill(n_blocks: int, k: int, block_k: int, sm_count: int) -> int:
    """The smallest power-of-two K split giving at least two programs per SM, keeping at least
    four K blocks per split."""
    split = 1
    while n_blocks * split < 2 * sm_count and triton.cdiv(k, block_k) >= 8 * split:
        split *= 2
    return split


def candidate_configs(rows: int, n: int, k: int, sm_count: int) -> list[GemvConfig]:
    """What the tuner times: cuBLAS, and each tile unsplit and, where it leaves SMs idle,
    split to fill. Long rows (K = 11008, 14336) also try two splits: with a few long programs
    per SM, the SMs that drew one program fewer idle through the last wave."""
    configs = [CUBLAS]
    tiles = _DOT_TILES if rows <= 16 else _WIDE_DOT_TILES
    for tile in (_FMA_TILES if rows == 1 else ()) + tiles:
        configs.append(tile)
        split = split_to_fill(triton.cdiv(n, tile.block_n), k, tile.block_k, sm_count)
        if split == 1 and triton.cdiv(k, tile.block_k) >= 32:
            split = 2
        if split > 1:
            configs.append(replace(tile, split_k=split))
    return configs


def row_tile(rows: int) -> int:
    """The dot kernel's row tile for `rows` rows: a power of two, at least 16 (the smallest
    tensor-core tile)."""
    return max(16, triton.next_power_of_2(rows))


def default_config(n: int, k: int, sm_count: int) -> GemvConfig:
    """The untimed choice: the first dot tile, split to fill the GPU."""
    tile = _DOT_TILES[0]
    return replace(tile, split_k=split_to_fill(triton.cdiv(n, tile.block_n), k, tile.block_k,
                                               sm_count))


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig | None = None, out: torch.Tensor | None = None,
         gated: bool = False) -> torch.Tensor:
    """x [M, K] (1 <= M <= MAX_ROWS, last dim contiguous) times weight [N, K] (contiguous,
    nn.Linear layout), plus bias [N], all in x's dtype (bfloat16 or float16) -> [M, N].

    Products and sums in float32, one rounding at the end. `config` skips the tuner (tests, the
    interpreter); `out` is a contiguous [M, N] tensor to write into. `gated`: x is [M, 2K] =
    [gate | up] and the input row is silu(gate) * up, rounded as `silu_and_mul` rounds it.
    """
    _check_inputs(x, weight, bias, out, gated)
    if config is None:
        config = tuned_config(x, weight, gated)
    return _launch(x, weight, bias, config, out, gated)


def gemv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   gated: bool = False) -> torch.Tensor:
    if gated:
        gate, up = x.chunk(2, dim=-1)
        x = torch.nn.functional.silu(gate) * up
    y = x.float() @ weight.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _check_inputs(x, weight, bias, out, gated: bool = False) -> None:
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"x must be [M, K] and weight [N, K]; got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    rows, k = x.shape
    n = weight.shape[0]
    if gated:
        if weight.shape[1] * 2 != k:
            raise ValueError(f"gated x must be [M, 2K] with K = weight.shape[1] = "
                             f"{weight.shape[1]}; got {tuple(x.shape)}")
        k //= 2
    if weight.shape[1] != k or k == 0 or n == 0:
        raise ValueError(f"weight must be [N, {k}] with N, K > 0; got {tuple(weight.shape)}")
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"x must have 1..{MAX_ROWS} rows, got {rows}")
    if x.dtype not in _DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"x and weight must share a dtype in {_DTYPES}; got {x.dtype} and "
                         f"{weight.dtype}")
    if x.stride(1) != 1 or not weight.is_contiguous():
        raise ValueError("x needs a contiguous last dimension and weight must be contiguous")
    if weight.device != x.device:
        raise ValueError(f"x is on {x.device} but weight on {weight.device}")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype
                             or not bias.is_contiguous() or bias.device != x.device):
        raise ValueError(f"bias must be a contiguous [{n}] {x.dtype} tensor on {x.device}; got "
                         f"{tuple(bias.shape)} {bias.dtype}")
    if out is not None and (out.shape != (rows, n) or out.dtype != x.dtype
                            or not out.is_contiguous() or out.device != x.device):
        raise ValueError(f"out must be a contiguous [{rows}, {n}] {x.dtype} tensor on "
                         f"{x.device}; got {tuple(out.shape)} {out.dtype}")


def grid_launcher(kernel, grid, warmup: bool = False):
    """`kernel[grid]`, or with `warmup` a compile of exactly what that launch would run (the
    same arguments give the same specialization), without running it; with kernels/pdl.py's
    launch options either way."""
    if warmup:
        return functools.partial(kernel.warmup, grid=grid, **pdl.LAUNCH)
    return functools.partial(kernel[grid], **pdl.LAUNCH)


def _launch(x, weight, bias, config: GemvConfig, out, gated: bool = False,
            warmup: bool = False) -> torch.Tensor | None:
    """Runs `config` (with `warmup`, only compiles what it would run)."""
    if config.kind == "cublas":
        if warmup:
            return None
        if gated:
            from runtime_service.model.kernels.activation import silu_and_mul
            x = silu_and_mul(x)
        y = torch.nn.functional.linear(x, weight, bias)
        return y if out is None else out.copy_(y)
    rows = x.shape[0]
    n, k = weight.shape
    if out is None:
        out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    split = config.split_k
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), split) * config.block_k
    target = out if split == 1 else torch.empty((split, rows, n), dtype=torch.float32,
                                                device=x.device)
    fused_bias = bias if split == 1 else None
    n_blocks = triton.cdiv(n, config.block_n)
    args = (x, weight, fused_bias, target, rows, n, k, x.stride(0), k_per_split)
    options = dict(HAS_BIAS=fused_bias is not None, GATED=gated, BLOCK_N=config.block_n,
                   BLOCK_K=config.block_k, EVEN_K=k % config.block_k == 0,
                   num_warps=config.num_warps, num_stages=config.num_stages)
    if config.kind == "dot":
        grid_launcher(_dot_kernel, (n_blocks, split), warmup)(
            *args, BLOCK_M=row_tile(rows), **options)
    else:
        grid_launcher(_fma_kernel, (n_blocks, split, rows), warmup)(
            *args, NUM_STAGES=config.num_stages, **options)
    if split > 1:
        grid_launcher(_split_sum_kernel, (triton.cdiv(n, _SUM_BLOCK), rows), warmup)(
            target, bias, out, rows, n, split, HAS_BIAS=bias is not None, BLOCK=_SUM_BLOCK,
            num_warps=4)
    return out


# ---- tuning ---------------------------------------------------------------------------------

_tuned: dict[tuple, GemvConfig] = {}
_tuning_totals = {"num_tuned": 0, "tuning_s": 0.0}


def tuned_config(x: torch.Tensor, weight: torch.Tensor, gated: bool = False) -> GemvConfig:
    """The fastest candidate for this shape, timed on the first call (see the module doc)."""
    rows, (n, k) = x.shape[0], weight.shape
    key = (x.device, x.dtype, 1 << (rows - 1).bit_length(), n, k, gated)
    config = _tuned.get(key)
    if config is not None:
        return config
    if not x.is_cuda:
        return default_config(n, k, sm_count=1)
    sms = sm_count(x.device.index)
    if torch.cuda.is_current_stream_capturing():
        return default_config(n, k, sms)
    if compile_ahead.recording():
        compile_ahead.record_candidates(
            key, (functools.partial(_launch, x, weight, None, config, None, gated, warmup=True)
                  for config in candidate_configs(rows, n, k, sms)))
        return default_config(n, k, sms)
    started = time.perf_counter()
    config = _tune(x, weight, candidate_configs(rows, n, k, sms), gated)
    _tuning_totals["tuning_s"] += time.perf_counter() - started
    _tuning_totals["num_tuned"] += 1
    _tuned[key] = config
    return config


def tuned_configs() -> dict[tuple, GemvConfig]:
    """Every choice made so far, by (device, dtype, rows bucket, N, K, gated): for benchmark
    reports."""
    return dict(_tuned)


def tuning_totals() -> tuple[int, float]:
    """(shapes timed, seconds spent timing them) since the process started: what start-up
    reports, and what a second start from a filled tuning cache must leave at zero."""
    return _tuning_totals["num_tuned"], _tuning_totals["tuning_s"]


_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


def export_tuned(device: torch.device) -> list[dict]:
    """The choices made on `device` as JSON-ready records, without the device (the file they
    go to names the GPU model)."""
    records = []
    for (dev, dtype, rows, n, k, gated), config in sorted(_tuned.items(), key=lambda i: i[0][2:]):
        if dev == device and dtype in _DTYPE_NAMES:
            records.append({"dtype": _DTYPE_NAMES[dtype], "rows": rows, "n": n, "k": k,
                            "gated": gated, "config": asdict(config)})
    return records


def import_tuned(device: torch.device, records: list[dict]) -> int:
    """Takes `export_tuned` records as the choices for `device`; returns how many. A record
    that does not parse (another Kiln version's) raises ValueError before any is taken."""
    names = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
    parsed = {}
    for record in records:
        try:
            rows = int(record["rows"])
            if rows < 1 or rows & (rows - 1) or record["dtype"] not in names:
                raise ValueError(f"rows {rows} or dtype {record['dtype']!r}")
            key = (device, names[record["dtype"]], rows, int(record["n"]), int(record["k"]),
                   bool(record["gated"]))
            parsed[key] = GemvConfig(**record["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a gemv tuning record: {record!r} ({exc})") from exc
    _tuned.update(parsed)
    return len(parsed)


def _tune(x, weight, candidates: list[GemvConfig], gated: bool) -> GemvConfig:
    """Times each candidate as decode runs it: back to back inside a CUDA graph, each call
    reading a different copy of the weight, the copies together larger than L2 (timing single
    launches with the cache flushed between them favoured other configs than the graphs run
    best, by a few percent)."""
    precompile(lambda config: _launch(x, weight, None, config, None, gated, warmup=True),
               candidates)
    copies = [weight] + [weight.clone() for _ in range(copies_beyond_l2(weight) - 1)]

    def time_one(config):
        return graph_time_per_call_us(
            functools.partial(_launch, bias=None, config=config, out=None, gated=gated), x, copies)

    timings_us = {}
    for config in candidates:
        try:
            timings_us[config] = time_one(config)
        except Exception as exc:  # noqa: BLE001 - a config this GPU cannot run is skipped
            log.warning("gemv config %s failed on %s: %r", config, tuple(weight.shape), exc)
    if not timings_us:
        raise RuntimeError(f"no gemv config runs for x {tuple(x.shape)}, weight "
                           f"{tuple(weight.shape)}")
    best, us = fastest(timings_us, time_one)
    log.info("gemv M=%d N=%d K=%d %s%s: %s, %.1f us (%d candidates)", x.shape[0],
             weight.shape[0], weight.shape[1], str(x.dtype).split(".")[1],
             " gated" if gated else "", best, us, len(timings_us))
    return best
