"""Which tile each quantized GEMV runs (quant_gemv.py, fp8_row_gemv.py), chosen per shape on
first use with gemv.py's clock over copies of the quantized weights larger than L2, and kept per
engine and GPU model by the start-up cache (kernel_tuning.py).

The tuner takes a candidate only if its output agrees with the first candidate's (the untimed
default) on the first call's own inputs: a tile that a GPU or compiler gets wrong is skipped with
a warning rather than chosen for being fast.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, replace

import torch
import triton

from runtime_service.model.kernels import compile_ahead, tuning_clock
from runtime_service.model.kernels.gemv import GemvConfig, split_to_fill
from runtime_service.model.kernels.tuning_clock import (copies_beyond_l2, fastest,
                                                        graph_time_per_call_us, precompile)

log = logging.getLogger("kiln.kernels.quant_tuning")


# Rows up to which int4 split tiles are also offered with their sums fused: run 32a's tuner
# took such tiles at 1-16 rows and never at 32 or 64, where they would only add compiles.
FUSED_SUM_MAX_ROWS = 16


def int4_candidates(rows: int, n: int, k: int, group_size: int, sm_count: int):
    """Tiles whose K span is whole groups dividing the row (no masks; a span that does not
    divide falls back to one group), each unsplit and split to fill the GPU (one-row tiles also
    split twice that), and up to FUSED_SUM_MAX_ROWS rows each split tile with its sums fused.
    One row also tries the CUDA-core kernel, first: it is the untimed default there."""
    num_groups = k // group_size
    # The fastest tiles of run 17's sweep on the Llama-3-8B shape (tiles x 1-4 stages x splits,
    # bench/NOTES.md): small one-row tiles, three stages; past 16 rows, 64-wide tiles.
    fma = ((16, 256, 1, 3), (32, 256, 2, 3), (16, 256, 1, 4), (32, 128, 1, 3))
    dot = ((64, 256, 4, 3), (64, 128, 4, 3), (64, 256, 4, 2), (32, 256, 4, 2))
    if rows > 16:
        # (64, 256, 4, 1), which the clock times fastest for o and down at 64 rows, ran o 2.7%
        # slower end to end while PDL's trigger came at each kernel's start (run 30d); with the
        # exit trigger the two o tiles give the same step (8,591 and 8,607 tok/s, run 31e).
        dot = ((64, 128, 4, 2), (64, 128, 4, 1), (64, 256, 4, 1), (64, 128, 4, 3))
    # The weight's rows as the MMA's rows, a warp per slice of them (quant_gemv's swap kernel):
    # at 16 rows it won three of the four projections by 3-10% (run 28c); at 64, one by 5%.
    swap = ((32, 128, 2, 3), (64, 256, 4, 2)) if 1 < rows <= 32 else ()
    tiles = [("fma",) + t for t in fma] if rows == 1 else []
    configs = []
    for kind, block_n, block_k, warps, stages in (tiles + [("dot",) + t for t in dot]
                                                  + [("swap",) + t for t in swap]):
        block_k = max(block_k, group_size)
        if num_groups % (block_k // group_size):
            block_k = group_size
        split = split_to_fill(triton.cdiv(n, block_n), k, block_k, sm_count)
        splits = {1, split}
        if kind == "fma" and triton.cdiv(k, block_k) >= 8 * split:
            splits.add(2 * split)           # the one-row tiles were often fastest split deeper
        for split_k in sorted(splits):
            config = GemvConfig(kind, block_n, block_k, warps, stages, split_k)
            if config not in configs:
                configs.append(config)
    # each split tile again with its splits summed in the same launch (no split-sum launch)
    return configs + [replace(config, fused_sum=True) for config in configs
                      if config.split_k > 1 and rows <= FUSED_SUM_MAX_ROWS]


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


def fp8_candidates(rows: int, n: int, k: int, sm_count: int):
    """For one row the fused CUDA-core kernel's tiles first (the untimed default there) and
    the fused fp8 tensor-core kernel's, each unsplit and split to fill; then
    `channel_candidates`, which quantize x in a launch of their own (the tuner times both
    launches)."""
    configs = []
    if rows == 1:
        # Each of the last four was the fastest on one Llama-3-8B projection in run 17's sweep
        # (tiles x 1-4 stages x splits, bench/NOTES.md).
        for block_n, block_k, warps, stages in ((16, 512, 4, 2), (8, 512, 2, 1),
                                                (16, 512, 4, 1), (8, 1024, 4, 1),
                                                (8, 256, 1, 1)):
            split = split_to_fill(triton.cdiv(n, block_n), k, block_k, sm_count)
            configs += [GemvConfig("fma", block_n, block_k, warps, stages, split_k)
                        for split_k in sorted({1, split})]
        # fp8 tensor-core tiles: ~1 instruction per weight byte in the offline SASS against
        # the fma kernel's ~4.3 (bench/kernel_sass.py); not yet timed on a GPU.
        for block_n, block_k, warps, stages in ((128, 128, 4, 3), (64, 256, 4, 3),
                                                (128, 256, 8, 3)):
            split = split_to_fill(triton.cdiv(n, block_n), k, block_k, sm_count)
            configs += [GemvConfig("swap", block_n, block_k, warps, stages, split_k)
                        for split_k in sorted({1, split})]
        # each split one-row tile again with its splits summed in the same launch
        configs += [replace(config, fused_sum=True) for config in configs if config.split_k > 1]
    return configs + channel_candidates(rows, n, k, sm_count)


_tuned: dict[tuple, GemvConfig] = {}
_tuning_totals = {"num_tuned": 0, "tuning_s": 0.0}


def tuned_config(key: tuple, x: torch.Tensor, weights: tuple, candidates: list[GemvConfig],
                 call) -> GemvConfig:
    """The fastest of `candidates` for `key`, timed on first use as gemv.py times its own: `call(x,
    weights, config)` back to back in a CUDA graph over copies of `weights` larger than L2,
    after all compile at once (`call(x, weights, config, warmup=True)`,
    tuning_clock.precompile). During capture or off CUDA the first candidate runs untimed."""
    config = _tuned.get(key)
    if config is not None:
        return config
    if not x.is_cuda or torch.cuda.is_current_stream_capturing():
        return candidates[0]
    if compile_ahead.recording():
        compile_ahead.record_candidates(key, (functools.partial(call, x, weights, candidate,
                                                                warmup=True)
                                              for candidate in candidates))
        return candidates[0]
    started = time.perf_counter()
    precompile(lambda candidate: call(x, weights, candidate, warmup=True), candidates)
    largest = max(weights, key=lambda t: t.numel() * t.element_size())
    copies = [weights] + [tuple(t.clone() for t in weights)
                          for _ in range(copies_beyond_l2(largest) - 1)]
    reference = call(x, weights, candidates[0]).float()
    # inputs the default cannot compute finitely (an overflowed activation) judge nothing
    gate = bool(torch.isfinite(reference).all())

    def time_one(candidate):
        return graph_time_per_call_us(functools.partial(_call_with, call=call, config=candidate),
                                      x, copies)

    timings_us = {}
    for candidate in candidates:
        try:
            error = candidate_error(call(x, weights, candidate), reference) if gate else 0.0
            if not error <= MAX_CANDIDATE_ERROR:            # NaN fails too
                log.warning("%s config %s disagrees with %s (relative error %.3g); skipped",
                            key[0], candidate, candidates[0], error)
                continue
            timings_us[candidate] = time_one(candidate)
        except Exception as exc:  # noqa: BLE001 - a config this GPU cannot run is skipped
            log.warning("%s config %s failed: %r", key[0], candidate, exc)
    if not timings_us:
        raise RuntimeError(f"no {key[0]} config runs for key {key}")
    config, us = fastest(timings_us, time_one)
    log.info("%s %s: %s, %.1f us (%d candidates)", key[0], key[3:], config, us, len(timings_us))
    _tuned[key] = config
    _tuning_totals["tuning_s"] += time.perf_counter() - started
    _tuning_totals["num_tuned"] += 1
    return config


# Every candidate computes the same quantized products summed in float32; only the order and
# the output's rounding differ (the kernel tests hold them to 5e-3 of the reference).
MAX_CANDIDATE_ERROR = 2e-2


def candidate_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative error of a candidate's output against the reference candidate's (float32)."""
    scale = reference.norm().item()
    return (out.float() - reference).norm().item() / (scale if scale > 0 else 1.0)


def _call_with(x, weights, call, config):
    return call(x, weights, config)


def tuned_configs() -> dict[tuple, GemvConfig]:
    return dict(_tuned)


def tuning_totals() -> tuple[int, float]:
    """(shapes timed, seconds spent timing them) since the process started (gemv.py's)."""
    return _tuning_totals["num_tuned"], _tuning_totals["tuning_s"]


_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
# fp8_gated: x is [gate | up] (fp8_gated_amax: with its block maxima given); fp8_gate_up: the
# projection that gives them; fp8_dot: rows quantized beforehand (by a norm, or a split row);
# fp8_rows: such rows past the GEMV's row limit (fp8_gemm.py)
_KINDS = ("int4", "int8", "fp8", "fp8_gated", "fp8_gated_amax", "fp8_gate_up", "fp8_dot",
          "fp8_rows")


def export_tuned(device: torch.device) -> list[dict]:
    """The choices made on `device` as JSON-ready records without the device, as gemv.py's
    `export_tuned`; each names its weight `kind` (int4 keys add the group size)."""
    records = []
    for key, config in sorted(_tuned.items(), key=lambda item: str(item[0])):
        kind, dev, dtype, rows, n, k, *group = key
        if dev == device and dtype in _DTYPE_NAMES:
            records.append({"kind": kind, "dtype": _DTYPE_NAMES[dtype], "rows": rows, "n": n,
                            "k": k, "group": group[0] if group else None,
                            "config": asdict(config)})
    return records


def import_tuned(device: torch.device, records: list[dict]) -> int:
    """Takes `export_tuned` records as the choices for `device`; returns how many. A record
    that does not parse raises ValueError before any is taken."""
    names = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
    parsed = {}
    for record in records:
        try:
            kind, rows = record["kind"], int(record["rows"])
            if kind not in _KINDS or rows < 1 or rows & (rows - 1):
                raise ValueError(f"kind {kind!r} or rows {rows}")
            key = (kind, device, names[record["dtype"]], rows, int(record["n"]), int(record["k"]))
            if kind == "int4":
                key += (int(record["group"]),)
            parsed[key] = GemvConfig(**record["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a quantized GEMV tuning record: {record!r} ({exc})") from exc
    _tuned.update(parsed)
    return len(parsed)


def sm_count(device: torch.device) -> int:
    return tuning_clock.sm_count(device.index if device.index is not None
                                 else torch.cuda.current_device())
