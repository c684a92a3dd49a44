"""Time to first token of one prompt, in-process: Kiln eager and with prefill graphs, beside HF
transformers' forward pass and the floor of the same matrix products through cuBLAS, same GPU,
same run.

A prompt's first token costs its prefill: at 1024 tokens of an 8B model that is mostly GPU time
(about 14 TFLOP of matrix products), at 128 tokens mostly host time (~300 kernel launches). The
rows say which side a length is on and how far Kiln is from each:
- "cuBLAS floor": every linear of the model at the prompt's rows (the logits of one row), plus
  torch's causal SDPA, each timed alone on the device: no norms, rope, KV stores or launches.
- "HF transformers": `model(ids, logits_to_keep=1)`, synchronised, as its generate pays.
- "Kiln eager" / "Kiln graphs <= N": the executor's time from submit to the first token, with
  prefill graphs off and with buckets up to N tokens, and with "(backend)" for each further
  `--attention-backends` entry (triton-flash: flash for the prompt's own tokens); "Kiln GPU" is
  the sum of the kernels that one eager prefill ran (torch.profiler), the part no host change
  can remove;
- "...: launch returned" / "...: GPU launch to token": when the step's launch returned to the
  host, and the device time from its first kernel to the sampled token (CUDA events). Close
  together, the GPU was waiting for the host's kernel launches.

    python3 bench/bench_prefill.py --model llama3-8b --json prefill.json
    python3 bench/bench_prefill.py --model tiny --device cpu --lengths 16,64   # smoke test
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from bench_common import git_commit
from decode_common import (SHAPES, build_hf, fixed_length, kiln_from_hf, kiln_generate_timed, log,
                           prompts, sync)
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request
from runtime_service.format.engine_config import BuildConfig

REPEATS = 5


def device_ms(fn, device: str, repeats: int = 10) -> float:
    """Median milliseconds of `fn()`, timed on the device (CUDA events) or the wall clock."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def cublas_floor_ms(shape: dict, length: int, device: str, dtype: torch.dtype) -> float:
    """One layer's linears and causal attention at `length` rows, times the layers, plus the
    logits of one row."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    head_dim = hidden // heads
    make = lambda *size: torch.randn(*size, device=device, dtype=dtype) * 0.02  # noqa: E731
    x, x_inter = make(length, hidden), make(length, inter)
    weights = [(x, make(head_dim * (heads + 2 * kv_heads), hidden)), (x, make(hidden, hidden)),
               (x, make(2 * inter, hidden)), (x_inter, make(hidden, inter))]
    linears = sum(device_ms(lambda a=a, w=w: torch.nn.functional.linear(a, w), device)
                  for a, w in weights)
    q, k, v = (make(1, heads, length, head_dim) for _ in range(3))
    attention = device_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True), device)
    head = make(shape["vocab_size"], hidden)
    logits = device_ms(lambda: torch.nn.functional.linear(x[-1:], head), device)
    return shape["num_hidden_layers"] * (linears + attention) + logits


@torch.inference_mode()
def hf_prefill_ms(model, vocab: int, length: int, device: str) -> float:
    ids = torch.tensor(prompts(1, length, vocab, 5), device=device)
    return device_ms(lambda: model(ids, logits_to_keep=1), device, REPEATS)


def kiln_ttft_ms(executor: Executor, vocab: int, length: int) -> float:
    times = []
    for seed in range(REPEATS + 1):
        request = Request(f"ttft-{length}-{seed}-{time.monotonic_ns()}",
                          prompts(1, length, vocab, 40 + seed)[0], fixed_length(1))
        _, [(first, _, _)] = kiln_generate_timed(executor, [request])
        times.append(first * 1e3)
    return statistics.median(times[1:])              # the first is a warm-up


def kiln_timeline_ms(executor: Executor, vocab: int, length: int) -> tuple[float, float]:
    """(ms from submit until the step's launch returned to the host, device ms from the
    launch's first kernel to its sampled token), medians over REPEATS prompts. When the first
    is close to the second, the GPU waited for the host's launches (bench/NOTES.md, run 15d)."""
    runner, launch = executor.runner, executor.runner.launch
    marks: dict = {}

    def timed_launch(batch):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        pending = launch(batch)
        end.record()
        marks.setdefault("returned", time.perf_counter())
        marks.setdefault("events", (start, end))
        return pending

    runner.launch = timed_launch
    returned, elapsed = [], []
    try:
        for seed in range(REPEATS + 1):
            marks.clear()
            request = Request(f"timeline-{length}-{seed}-{time.monotonic_ns()}",
                              prompts(1, length, vocab, 80 + seed)[0], fixed_length(1))
            submitted = time.perf_counter()
            kiln_generate_timed(executor, [request])
            start, end = marks["events"]
            returned.append((marks["returned"] - submitted) * 1e3)
            elapsed.append(start.elapsed_time(end))
    finally:
        del runner.launch
    return statistics.median(returned[1:]), statistics.median(elapsed[1:])


def kiln_gpu_ms(executor: Executor, vocab: int, length: int, table: Path | None) -> float:
    """The summed device time of the kernels of one prefill (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    request = Request(f"gpu-{length}-{time.monotonic_ns()}", prompts(1, length, vocab, 60)[0],
                      fixed_length(1))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        kiln_generate_timed(executor, [request])
    events = prof.key_averages()
    if table is not None:
        table.write_text(events.table(sort_by="self_device_time_total", row_limit=25))
    return sum(e.self_device_time_total for e in events) / 1e3


def host_profile(executor: Executor, vocab: int, length: int, path: Path) -> None:
    """cProfile of one prefill's host work, by own time. From Python 3.12 one profiler sees
    every thread (the step loop's too); before, only this one (submit, waiting on the stream)."""
    import cProfile
    import io
    import pstats

    request = Request(f"host-{length}-{time.monotonic_ns()}", prompts(1, length, vocab, 70)[0],
                      fixed_length(1))
    profiler = cProfile.Profile()
    profiler.enable()
    wall, _ = kiln_generate_timed(executor, [request])
    profiler.disable()
    text = io.StringIO()
    text.write(f"TTFT {length} under cProfile: {wall * 1e3:.1f} ms\n")
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
    path.write_text(text.getvalue())


def run(args) -> dict:
    device = args.device
    shape = SHAPES[args.model]
    vocab = shape["vocab_size"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    report: dict = {"model": args.model, "commit": git_commit(), "lengths": args.lengths,
                    "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "rows": {}}
    rows = report["rows"]
    rows["cuBLAS floor"] = {n: cublas_floor_ms(shape, n, device, dtype) for n in args.lengths}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))     # kept if a later row fails
    log("cuBLAS floor", rows["cuBLAS floor"])
    hf_model, hf_config = build_hf(shape, device)
    rows["HF transformers"] = {n: hf_prefill_ms(hf_model, vocab, n, device) for n in args.lengths}
    log("HF transformers", rows["HF transformers"])
    build = BuildConfig(dtype=str(dtype).split(".")[1], max_batch_size=64,
                        max_input_len=max(args.lengths), max_seq_len=max(args.lengths) + 64,
                        max_num_tokens=max(args.lengths))
    loaded = kiln_from_hf(hf_model, hf_config, dtype, device, build)
    del hf_model
    gc.collect()
    for backend, graph_tokens in itertools.product(args.attention_backends, args.graph_tokens):
        name = (f"Kiln graphs <= {graph_tokens}" if graph_tokens else "Kiln eager") \
            + ("" if backend == "auto" else f" ({backend})")
        executor = Executor(loaded, ExecutorOptions(
            device=device, dtype=str(dtype).split(".")[1], load_tokenizer=False,
            cuda_graph_max_batch_size=8 if device == "cuda" else 0,
            cuda_graph_max_prefill_tokens=graph_tokens, attention_backend=backend)).start()
        try:
            rows[name] = {n: kiln_ttft_ms(executor, vocab, n) for n in args.lengths}
            log(name, rows[name])
            if args.json:
                args.json.write_text(json.dumps(report, indent=1))
            if (args.json and graph_tokens == max(args.graph_tokens)
                    and backend == args.attention_backends[0]):
                host_profile(executor, vocab, 1024 if 1024 in args.lengths else args.lengths[-1],
                             args.json.with_name(f"{args.json.stem}_host.txt"))
            if device == "cuda":
                timeline = {n: kiln_timeline_ms(executor, vocab, n) for n in args.lengths}
                rows[f"{name}: launch returned"] = {n: t[0] for n, t in timeline.items()}
                rows[f"{name}: GPU launch to token"] = {n: t[1] for n, t in timeline.items()}
            if not graph_tokens and device == "cuda" and backend == args.attention_backends[0]:
                rows["Kiln GPU (eager kernels)"] = {
                    n: kiln_gpu_ms(executor, vocab, n, args.json.with_name(
                        f"{args.json.stem}_kernels_{n}.txt") if args.json else None)
                    for n in args.lengths}
                log("Kiln GPU", rows["Kiln GPU (eager kernels)"])
        finally:
            executor.shutdown()
        del executor
        gc.collect()
        sync(device)
    return report


def table(report: dict) -> str:
    lengths = report["lengths"]
    lines = ["| ms | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "| --- |" + " --- |" * len(lengths)]
    for name, figures in report["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{figures[n]:.2f}" for n in lengths) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=[128, 512, 1024, 2048])
    parser.add_argument("--graph-tokens", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 512, 2048],
                        help="Kiln's cuda_graph_max_prefill_tokens, one executor each (0: eager)")
    parser.add_argument("--attention-backends", type=lambda s: s.split(","), default=["auto"],
                        help="one executor per backend and graph limit, e.g. auto,triton-flash")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = run(args)
    print(table(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
