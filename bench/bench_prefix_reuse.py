"""Time to first token with and without block reuse, for requests that share a long prefix.

Every request is a shared prefix (1,000 tokens by default) plus its own 24-token suffix, run one
at a time so the time to first token is one prefill. Three cases, on the same random-weight LLaMA:

    reuse off            the peer: the whole prompt is prefilled every time
    reuse on, cold       the first request with a new prefix: nothing cached yet
    reuse on, warm       later requests with that prefix: its full blocks come from the cache

With reuse, the warm prefill computes only the uncached tokens (the suffix plus the prefix's
partial last block), so warm/cold should approach uncached/total. Each repeat uses a fresh prefix,
so every repeat has its own cold request. Outputs (greedy) with reuse must equal those without.
Printed beside them: a prompt of only the uncached tokens with reuse off (the floor a warm request
can reach) and transformers' forward over the full prompt (scale). All cases take turns request
by request, so load from elsewhere on the machine falls on each alike.

    python bench/bench_prefix_reuse.py --out bench/results/prefix_reuse.json
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


def ttft_and_tokens(executor, request) -> tuple[float, list[int], int]:
    """Seconds from submit to the first output, the tokens, and the tokens served from cache."""
    start = time.perf_counter()
    stream = executor.submit(request)
    first_at, tokens, last = None, [], None
    for out in stream:
        if first_at is None:
            first_at = time.perf_counter()
        tokens.extend(out.new_token_ids)
        last = out
    return first_at - start, tokens, last.num_cached_tokens


def hf_forward(folder: Path, device: str):
    """transformers' forward over a whole prompt, for scale: returns a timed callable."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()

    def seconds(prompt: list[int]) -> float:
        ids = torch.tensor([prompt], device=device)
        with torch.no_grad():
            start = time.perf_counter()
            model(ids, logits_to_keep=1)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - start

    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix-len", type=int, default=1000)
    parser.add_argument("--suffix-len", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="fresh prefixes, one cold each")
    parser.add_argument("--warm-per-repeat", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/prefix_reuse.json"))
    args = parser.parse_args(argv)

    import torch

    from runtime_service.engine.executor import Executor, ExecutorOptions
    from runtime_service.engine.request import Request, SamplingParams
    from support.random_llama import make_random_llama, random_prompts

    prompt_len = args.prefix_len + args.suffix_len
    cached_tokens = (args.prefix_len // args.block_size) * args.block_size
    uncached_tokens = prompt_len - cached_tokens
    shape = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                 num_hidden_layers=args.layers, num_attention_heads=args.heads,
                 num_key_value_heads=args.heads, max_position_embeddings=2 * prompt_len)
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-reuse-"))
    try:
        folder = make_random_llama(work / "hf", **shape)
        params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
        per_repeat = 1 + args.warm_per_repeat
        prefixes = random_prompts([args.prefix_len] * args.repeats, args.vocab, seed=11)
        suffixes = random_prompts([args.suffix_len] * (args.repeats * per_repeat), args.vocab,
                                  seed=12)
        prompts = [[prefix + suffixes[r * per_repeat + i] for i in range(per_repeat)]
                   for r, prefix in enumerate(prefixes)]
        warmup = random_prompts([prompt_len], args.vocab, seed=13)[0]
        short_prompts = random_prompts([uncached_tokens] * args.repeats, args.vocab, seed=14)

        def executor(reuse: bool):
            return Executor.from_folder(folder, ExecutorOptions(
                device=args.device, block_size=args.block_size, enable_block_reuse=reuse,
                kv_max_tokens=16 * prompt_len, load_tokenizer=False)).start()

        times = {"reuse_off": [], "reuse_on_cold": [], "reuse_on_warm": [], "short_prompt": [],
                 "hf_full_forward": []}
        outputs = {"reuse_off": [], "reuse_on": []}
        cached = {"cold": [], "warm": []}
        # Both engines stay loaded and take turns, request by request, so load from elsewhere
        # on the machine falls on both sides alike; only one ever computes at a time.
        plain, reuse = executor(False), executor(True)
        hf_seconds = hf_forward(folder, args.device)
        try:
            for engine in (plain, reuse):
                ttft_and_tokens(engine, Request("warmup", warmup, params))
            hf_seconds(warmup)
            for r, group in enumerate(prompts):
                for i, prompt in enumerate(group):
                    seconds, tokens, _ = ttft_and_tokens(plain, Request(f"off-{r}-{i}", prompt,
                                                                        params))
                    times["reuse_off"].append(seconds)
                    outputs["reuse_off"].append(tokens)
                    seconds, tokens, num_cached = ttft_and_tokens(
                        reuse, Request(f"on-{r}-{i}", prompt, params))
                    times["reuse_on_cold" if i == 0 else "reuse_on_warm"].append(seconds)
                    cached["cold" if i == 0 else "warm"].append(num_cached)
                    outputs["reuse_on"].append(tokens)
                times["hf_full_forward"].append(hf_seconds(group[0]))
                # The floor for a warm request: a prompt of only its uncached tokens.
                times["short_prompt"].append(ttft_and_tokens(
                    plain, Request(f"short-{r}", short_prompts[r], params))[0])
                print(f"repeat {r}: reuse off {times['reuse_off'][-1] * 1e3:.1f} ms, cold "
                      f"{times['reuse_on_cold'][-1] * 1e3:.1f} ms, warm "
                      f"{times['reuse_on_warm'][-1] * 1e3:.1f} ms", file=sys.stderr, flush=True)
            stats = reuse.stats()
        finally:
            plain.shutdown()
            reuse.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median_ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    expected_ratio = uncached_tokens / prompt_len
    identical = outputs["reuse_on"] == outputs["reuse_off"]
    mismatches = [i for i, (a, b) in enumerate(zip(outputs["reuse_on"], outputs["reuse_off"]))
                  if a != b]
    report = {
        "benchmark": "prefix_reuse",
        "model": shape | {"dtype": "float32", "weights": "random"},
        "prefix_len": args.prefix_len, "suffix_len": args.suffix_len, "prompt_len": prompt_len,
        "block_size": args.block_size, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "warm_per_repeat": args.warm_per_repeat,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_1m_start_end": [load_start, os.getloadavg()[0]],
                    "python": platform.python_version(), "torch": torch.__version__,
                    "device": args.device, "machine": platform.machine()},
        "commit": git_commit(),
        "median_ttft_ms": {k: round(v, 2) for k, v in median_ms.items()},
        "warm_vs_cold": round(median_ms["reuse_on_warm"] / median_ms["reuse_on_cold"], 4),
        "warm_vs_reuse_off": round(median_ms["reuse_on_warm"] / median_ms["reuse_off"], 4),
        "cold_vs_reuse_off": round(median_ms["reuse_on_cold"] / median_ms["reuse_off"], 4),
        "expected_ratio": round(expected_ratio, 4),
        "expected_cached_tokens": cached_tokens,
        "warm_vs_short_prompt": round(median_ms["reuse_on_warm"] / median_ms["short_prompt"], 4),
        "num_cached_tokens": {k: sorted(set(v)) for k, v in cached.items()},
        "outputs_identical": identical,
        "mismatched_requests": mismatches,
        "blocks_free_after": [stats.num_free_blocks, stats.num_total_blocks],
        "all_ttft_ms": {k: [round(1e3 * x, 2) for x in v] for k, v in times.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    n_warm = args.repeats * args.warm_per_repeat
    print(f"{prompt_len}-token prompts = {args.prefix_len} shared + {args.suffix_len} own, "
          f"block {args.block_size}; LLaMA h{args.hidden} x{args.layers} layers fp32, "
          f"{args.device}; medians")
    print(f"{'time to first token':28}{'ms':>9}{'vs reuse off':>14}{'cached tokens':>15}")
    print(f"{'reuse off (peer)':28}{median_ms['reuse_off']:>9.1f}{1.0:>14.3f}{0:>15}"
          f"   n={len(times['reuse_off'])}")
    print(f"{'reuse on, cold':28}{median_ms['reuse_on_cold']:>9.1f}"
          f"{report['cold_vs_reuse_off']:>14.3f}{str(report['num_cached_tokens']['cold']):>15}"
          f"   n={args.repeats}")
    print(f"{'reuse on, warm':28}{median_ms['reuse_on_warm']:>9.1f}"
          f"{report['warm_vs_reuse_off']:>14.3f}{str(report['num_cached_tokens']['warm']):>15}"
          f"   n={n_warm}")
    print(f"{f'reuse off, {uncached_tokens}-token prompt':28}{median_ms['short_prompt']:>9.1f}"
          f"{median_ms['short_prompt'] / median_ms['reuse_off']:>14.3f}{0:>15}"
          f"   n={args.repeats}  (the floor for warm)")
    print(f"{'transformers full forward':28}{median_ms['hf_full_forward']:>9.1f}"
          f"{median_ms['hf_full_forward'] / median_ms['reuse_off']:>14.3f}{'':>15}"
          f"   n={args.repeats}  (no sampling, for scale)")
    print(f"warm/cold {report['warm_vs_cold']:.3f}, expected (uncached/total) "
          f"{uncached_tokens}/{prompt_len} = {expected_ratio:.3f}")
    print(f"outputs identical: {'yes' if identical else 'no'} "
          f"({len(outputs['reuse_on'])} requests, greedy, {args.new_tokens} new tokens)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
