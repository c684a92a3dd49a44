"""Host time of scheduling one decode step, against the GPU time it has to hide under.

With overlapped scheduling the step loop prepares step n+1 while the GPU runs step n, so the
host's per-step work must stay under the GPU's step time or the GPU waits. This times the
scheduler's part (schedule + KV block bookkeeping) per decode step for N running sequences of
a 128-token prompt (median over the steps of a 128-token decode, best of three runs). It prints
that beside the H100 step time of the same load (wall time of bench_decode's NxN128/128 runs
over their steps, bench/NOTES.md run 8), which is the budget. CPU only; JSON to --json.

    python3 bench/bench_scheduler.py --json bench/results/scheduler.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime_service.engine.kv_cache import KVCacheManager  # noqa: E402
from runtime_service.engine.request import Request, SamplingParams  # noqa: E402
from runtime_service.engine.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from runtime_service.engine.sequence import Sequence  # noqa: E402

# Whole-load wall / steps on one H100, Llama-2-7B shape (run 8: 1.246 s / 128 steps at 64,
# 2.865 s / 132 steps at 256), prefill included: the GPU time a step's host work can hide under.
H100_STEP_MS = {64: 1246 / 128, 256: 2865 / 132}


def decode_step_ms(num_seqs: int, steps: int = 128, prompt_len: int = 128) -> float:
    kv = KVCacheManager(num_seqs * (prompt_len + steps) // 16 + 64, 16)
    scheduler = Scheduler(SchedulerConfig(max_batch_size=num_seqs, max_num_tokens=8192), kv)
    sampling = SamplingParams(max_new_tokens=steps, min_new_tokens=steps, end_id=-1)
    for i in range(num_seqs):
        scheduler.add(Sequence(Request(f"r{i}", list(range(1, prompt_len + 1)), sampling), 4096))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        batch = scheduler.schedule()
        for item in batch.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            kv.register_computed_blocks(item.seq)
        times.append(time.perf_counter() - start)
        for item in batch.scheduled:                  # the sampled token arrives
            item.seq.token_ids.append(7)
            kv.register_computed_blocks(item.seq)
    return statistics.median(times[2:]) * 1e3        # decode steps only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = {"results": {}}
    print(f"{'seqs':>5}  {'Kiln schedule ms/step':>22}  {'H100 step ms (budget)':>22}  share")
    for n in args.seqs:
        host = min(decode_step_ms(n) for _ in range(3))
        budget = H100_STEP_MS.get(n)
        report["results"][str(n)] = {"schedule_ms_per_step": host, "h100_step_ms": budget}
        print(f"{n:>5}  {host:>22.3f}  {budget if budget else float('nan'):>22.2f}  "
              f"{host / budget:.1%}" if budget else f"{n:>5}  {host:>22.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
