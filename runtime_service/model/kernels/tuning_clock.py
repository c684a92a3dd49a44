"""The tuners' clock (gemv.py, quant_tuning.py) and the benchmarks': a call's GPU time inside a
CUDA graph of back-to-back calls that cycle over weight copies larger than L2, as decode runs
them. Timing single launches with the cache flushed between them favoured other configs than
the graphs run best, by a few percent (bench/NOTES.md). A shape's candidates compile together
first (`precompile`).
"""

from __future__ import annotations

import functools
import logging
import statistics

import torch

from runtime_service.model.kernels import compile_ahead

log = logging.getLogger("kiln.kernels.tuning_clock")


def precompile(warm_up, candidates: list) -> None:
    """Compiles every candidate's kernels at once, so that timing them one by one does not wait
    for each compile in turn; `warm_up(config)` makes a candidate's launches with warmup=True.
    They compile in the pod's compile workers where it runs them, else on a thread pool
    (compile_ahead.compile_launches): a fresh node's first pod spent 32-41 s tuning, mostly
    compiling one candidate after another (bench/NOTES.md, run 17). Best effort: what fails
    here compiles (or fails) when it is timed, as it did before."""
    import triton

    if len(candidates) < 2 or not hasattr(triton, "AsyncCompileMode"):
        return
    try:
        compile_ahead.compile_launches([functools.partial(warm_up, config)
                                        for config in candidates])
    except Exception as exc:  # noqa: BLE001 - compiling early is an optimisation only
        log.warning("compiling the tuning candidates early failed (%r); they compile as they "
                    "are timed", exc)


def copies_beyond_l2(weight: torch.Tensor) -> int:
    l2_bytes = torch.cuda.get_device_properties(weight.device).L2_cache_size
    return max(1, -(-3 * l2_bytes // (weight.numel() * weight.element_size())))


def graph_time_per_call_us(call, x: torch.Tensor, copies: list[torch.Tensor], calls: int = 24,
                           replays: int = 5) -> float:
    """Median GPU time per call of `call(x, weight)` in a graph of `calls` calls cycling over
    `copies` (the tuner's clock, and bench/bench_gemv.py's)."""
    for weight in copies:               # compiles, and leaves nothing lazy for the capture
        call(x, weight)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(x, copies[i % len(copies)])
    graph.replay()
    times_us = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times_us.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return sorted(times_us)[len(times_us) // 2]


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    """Streaming multiprocessors of CUDA device `device_index` (what split-K fills)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# A run-off among near ties: candidates within RUNOFF_MARGIN of the fastest first time (at most
# RUNOFF_FINALISTS of them) are timed RUNOFF_ROUNDS times more, in alternating order.
RUNOFF_MARGIN = 0.05
RUNOFF_FINALISTS = 3
RUNOFF_ROUNDS = 2


def fastest(timings_us: dict, time_again) -> tuple:
    """(config, us): the fastest of `timings_us` (config -> first time), after a run-off among
    the near ties, `time_again(config)` giving another time. One timing each left the choice
    to noise and to the GPU's clock drifting as it warms: candidates a few percent apart traded
    places between pods, worth up to 9% of a 64-row int4 step and 10% of an fp8 projection
    (bench/NOTES.md, runs 26b and 28d). Each finalist's figure is the median of its times; the
    alternating order puts every finalist early and late alike. Finalists that fail again drop
    out."""
    best_us = min(timings_us.values())
    finalists = sorted((c for c, us in timings_us.items() if us <= best_us * (1 + RUNOFF_MARGIN)),
                       key=timings_us.get)[:RUNOFF_FINALISTS]
    samples = {config: [timings_us[config]] for config in finalists}
    if len(finalists) > 1:
        for round_ in range(RUNOFF_ROUNDS):
            for config in (finalists if round_ % 2 else finalists[::-1]):
                if config not in samples:           # it failed in an earlier round
                    continue
                try:
                    samples[config].append(time_again(config))
                except Exception as exc:  # noqa: BLE001 - as the first round skips it
                    log.warning("config %s failed when timed again: %r", config, exc)
                    samples.pop(config, None)
    medians = {config: statistics.median(times) for config, times in samples.items()}
    if not medians:
        return min(timings_us.items(), key=lambda item: item[1])
    config = min(medians, key=medians.get)
    return config, medians[config]
