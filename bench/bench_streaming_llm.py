"""StreamingLLM: one stream of 20x the attention window, in flat memory at a flat time per token.

A random-weight LLaMA with a small max_position_embeddings serves one request of 20 * window new
tokens (temperature 1.0, fixed seed, eos ignored) through an executor that keeps 4 sink tokens and
a sliding window. Along the stream it records each token's inter-arrival time and the KV blocks
held (total - free). It reports the median (and mean, which carries the periodic key re-rotation)
per-token time in the first, middle and last 10% of the stream, and the most blocks held against
the bound (sink blocks + window blocks + 1).

Peers, the same weights without a window:
    plain, to max_seq_len      the model's own limit: the stream stops at max_position_embeddings
    plain, same length         the same weights with max_position_embeddings raised to fit the
                               whole stream (default rotary does not depend on it): blocks and
                               per-token time grow with the length
Check: with the window larger than the stream, greedy tokens equal plain generation.
Every engine's KV cache is capped near what one stream needs (on CUDA the default would take 90%
of free memory per engine). On CUDA the windowed engine decodes without captured graphs (they
assume absolute cache positions) while the plain peers use them.

    python bench/bench_streaming_llm.py --out bench/results/streaming_llm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_common import git_commit  # also puts the repo and tests/ on sys.path
SERIES_EVERY = 64          # tokens per point of the per-token series kept in the JSON


def rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_stream(executor, request) -> dict:
    """Per-token inter-arrival seconds, blocks held after each output, and memory at the end."""
    blocks_held, gaps, tokens = [], [], []
    start = previous = time.perf_counter()
    first_at = None
    last = None
    for out in executor.submit(request):
        now = time.perf_counter()
        if first_at is None:
            first_at = now
        elif out.new_token_ids:
            gaps.extend([(now - previous) / len(out.new_token_ids)] * len(out.new_token_ids))
        previous = now
        tokens.extend(out.new_token_ids)
        stats = executor.stats()
        blocks_held.extend([stats.num_total_blocks - stats.num_free_blocks]
                           * max(1, len(out.new_token_ids)))
        last = out
    return {"gaps_s": gaps, "blocks_held": blocks_held, "tokens": tokens,
            "ttft_s": first_at - start, "finish_reason": last.finish_reason.value,
            "rss_mib_end": rss_mib()}


def segments(values: list[float], fraction: float = 0.1) -> dict:
    """Median and mean of the first, middle and last `fraction` of a series, in milliseconds."""
    n = len(values)
    width = max(1, int(n * fraction))
    middle = (n - width) // 2
    parts = {"first": values[:width], "middle": values[middle:middle + width],
             "last": values[n - width:]}
    return {name: {"median_ms": round(1e3 * statistics.median(part), 3),
                   "mean_ms": round(1e3 * statistics.fmean(part), 3), "tokens": len(part)}
            for name, part in parts.items()}


def summarize(run: dict) -> dict:
    seg = segments(run["gaps_s"])
    blocks = run["blocks_held"]
    width = max(1, len(blocks) // 10)
    return {
        "tokens": len(run["tokens"]), "finish_reason": run["finish_reason"],
        "ttft_ms": round(1e3 * run["ttft_s"], 2),
        "per_token": seg,
        "last_vs_first_median": round(seg["last"]["median_ms"] / seg["first"]["median_ms"], 3),
        "last_vs_first_mean": round(seg["last"]["mean_ms"] / seg["first"]["mean_ms"], 3),
        "blocks_held": {"max": max(blocks), "first_10pct_max": max(blocks[:width]),
                        "last_10pct_max": max(blocks[-width:])},
        "rss_mib_end": run["rss_mib_end"],
    }


def with_max_positions(folder: Path, dest: Path, max_positions: int) -> Path:
    """A copy of an HF folder whose config allows `max_positions`; the weights are shared."""
    dest.mkdir()
    for item in folder.iterdir():
        if item.name != "config.json":
            (dest / item.name).symlink_to(item.resolve())
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = max_positions
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=128, help="max_attention_window (tokens)")
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--windows", type=int, default=20, help="stream length in windows")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--max-positions", type=int, default=256,
                        help="the model's max_position_embeddings (its max_seq_len)")
    parser.add_argument("--check-tokens", type=int, default=200,
                        help="greedy tokens for the window-larger-than-stream check")
    parser.add_argument("--repeats", type=int, default=3,
                        help="streams per engine, combined token by token (median)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/streaming_llm.json"))
    args = parser.parse_args(argv)

    import torch

    from runtime_service.engine.executor import Executor, ExecutorOptions
    from runtime_service.engine.request import Request, SamplingParams
    from support.random_llama import make_random_llama, random_prompts

    stream_len = args.windows * args.window
    shape = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                 num_hidden_layers=args.layers, num_attention_heads=args.heads,
                 num_key_value_heads=args.heads, max_position_embeddings=args.max_positions)
    sink_blocks = -(-args.sink // args.block_size)
    window_blocks = -(-args.window // args.block_size)
    bound = sink_blocks + window_blocks + 1
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-streaming-"))

    def executor(folder: Path, window: int | None = None, kv_tokens: int | None = None):
        options = dict(device=args.device, block_size=args.block_size, load_tokenizer=False,
                       kv_max_tokens=kv_tokens)
        if window is not None:
            options |= dict(max_attention_window=window, sink_token_length=args.sink,
                            streaming_llm=True)
        return Executor.from_folder(folder, ExecutorOptions(**options)).start()

    def combine(runs: list[dict], stats) -> tuple[dict, dict]:
        """Token by token, the median over the streams: a burst of load elsewhere on the machine
        lands on one stream's tokens, not on all of them at the same point."""
        combined = {"gaps_s": [statistics.median(g) for g in zip(*(r["gaps_s"] for r in runs))],
                    "blocks_held": [max(b) for b in zip(*(r["blocks_held"] for r in runs))],
                    "tokens": runs[0]["tokens"], "ttft_s": statistics.median(
                        r["ttft_s"] for r in runs), "finish_reason": runs[-1]["finish_reason"],
                    "rss_mib_end": runs[-1]["rss_mib_end"]}
        summary = summarize(combined) | {"num_total_blocks": stats.num_total_blocks,
                                         "blocks_free_after": stats.num_free_blocks}
        gaps, blocks = combined["gaps_s"], combined["blocks_held"]
        series = {"tokens": list(range(0, len(gaps), SERIES_EVERY)),
                  "median_ms": [round(1e3 * statistics.median(gaps[i:i + SERIES_EVERY]), 3)
                                for i in range(0, len(gaps), SERIES_EVERY)],
                  "blocks_held_max": [max(blocks[i:i + SERIES_EVERY])
                                      for i in range(0, len(gaps), SERIES_EVERY)]}
        return summary, series

    try:
        folder = make_random_llama(work / "hf", **shape)
        long_folder = with_max_positions(folder, work / "hf-long", args.prompt_len + stream_len)
        # name: (engine, new tokens). All stay loaded and take turns stream by stream, so drift
        # in the machine's load falls on each alike; only one ever computes at a time.
        engines = {
            "streaming": (executor(folder, window=args.window,
                                   kv_tokens=4 * bound * args.block_size), stream_len),
            "plain_to_max_seq_len": (executor(folder, kv_tokens=args.max_positions
                                              + args.block_size),
                                     args.max_positions - args.prompt_len),
            "plain_same_length": (executor(long_folder, kv_tokens=args.prompt_len + stream_len
                                           + args.block_size), stream_len),
        }
        runs = {name: [] for name in engines}
        prompt = random_prompts([args.prompt_len], args.vocab, seed=21)[0]
        try:
            for name, (engine, _) in engines.items():
                engine.generate([Request(f"{name}-warmup", prompt,
                                         SamplingParams(max_new_tokens=4))])
            for k in range(args.repeats):
                for name, (engine, new_tokens) in engines.items():
                    run = run_stream(engine, Request(f"{name}-{k}", prompt, SamplingParams(
                        max_new_tokens=new_tokens, temperature=1.0, seed=5 + k, ignore_eos=True)))
                    runs[name].append(run)
                    print(f"{name} stream {k}: {len(run['tokens'])} tokens, median "
                          f"{1e3 * statistics.median(run['gaps_s']):.2f} ms/token, max blocks "
                          f"{max(run['blocks_held'])}", file=sys.stderr, flush=True)
            results, series = {}, {}
            for name, (engine, _) in engines.items():
                results[name], series[name] = combine(runs[name], engine.stats())
        finally:
            for engine, _ in engines.values():
                engine.shutdown()

        check_window = args.prompt_len + args.check_tokens + args.block_size
        prompt = random_prompts([args.prompt_len], args.vocab, seed=22)[0]
        greedy = SamplingParams(max_new_tokens=args.check_tokens, ignore_eos=True)
        check_kv_tokens = check_window + args.block_size
        plain = executor(long_folder if check_window > args.max_positions else folder,
                         kv_tokens=check_kv_tokens)
        wide = executor(folder, window=check_window, kv_tokens=4 * check_kv_tokens)
        try:
            expected = plain.generate([Request("p", prompt, greedy)])["p"]
            got = wide.generate([Request("s", prompt, greedy)])["s"]
        finally:
            plain.shutdown()
            wide.shutdown()
        identical = got == expected
        first_difference = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
                                None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "benchmark": "streaming_llm",
        "model": shape | {"dtype": "float32", "weights": "random"},
        "window": args.window, "sink": args.sink, "block_size": args.block_size,
        "prompt_len": args.prompt_len, "stream_tokens": stream_len, "repeats": args.repeats,
        "block_bound": bound,
        "sampling": {"temperature": 1.0, "seed": "5 + stream index", "ignore_eos": True},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_1m_start_end": [load_start, os.getloadavg()[0]],
                    "python": platform.python_version(), "torch": torch.__version__,
                    "device": args.device, "machine": platform.machine()},
        "commit": git_commit(),
        "results": results,
        "window_larger_than_stream": {"window": check_window, "tokens": args.check_tokens,
                                      "identical": identical,
                                      "first_difference": first_difference},
        f"series_every_{SERIES_EVERY}_tokens": series,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"one stream, prompt {args.prompt_len}; window {args.window} + sink {args.sink}, block "
          f"{args.block_size}; LLaMA h{args.hidden} x{args.layers} layers fp32, max positions "
          f"{args.max_positions}, {args.device}")
    print(f"{'ms per token, by tenth':22}{'':>7}{'median':>24}{'mean':>24}"
          f"{'last/first':>16}{'blocks held':>16}")
    print(f"{'of the stream':22}{'tokens':>7}" + f"{'first':>8}{'middle':>8}{'last':>8}" * 2
          + f"{'median':>8}{'mean':>8}{'first':>8}{'max':>8}")
    labels = {"streaming": "Kiln StreamingLLM", "plain_to_max_seq_len": "plain, to max_seq_len",
              "plain_same_length": "plain, same length"}
    for key, label in labels.items():
        r, p = results[key], results[key]["per_token"]
        cells = [p[part][stat] for stat in ("median_ms", "mean_ms")
                 for part in ("first", "middle", "last")]
        print(f"{label:22}{r['tokens']:>7}" + "".join(f"{c:>8.2f}" for c in cells)
              + f"{r['last_vs_first_median']:>8.2f}{r['last_vs_first_mean']:>8.2f}"
              f"{r['blocks_held']['first_10pct_max']:>8}{r['blocks_held']['max']:>8}")
    print(f"StreamingLLM blocks held: max {results['streaming']['blocks_held']['max']}, bound "
          f"{bound} (sink {sink_blocks} + window {window_blocks} + 1); stream is "
          f"{stream_len / args.max_positions:.0f}x max_seq_len")
    print(f"window larger than the stream ({check_window} > {args.prompt_len}+"
          f"{args.check_tokens}): tokens equal plain generation: {'yes' if identical else 'no'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
