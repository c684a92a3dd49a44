"""bench_decode's peer: HF transformers' `generate` on the same random weights and GPU, through
the same batch-1, TTFT and loads. It runs static batches of at most --hf-max-batch requests (its
memory grows with the batch), so its tokens/s for a larger concurrency is that of its largest
batch, which is what serving such a load with `generate` would give.
"""

from __future__ import annotations

import gc
import statistics
import time

import torch

from decode_common import TTFT_PROMPTS, log, prompts, sync


@torch.inference_mode()
def bench_hf(model, vocab: int, device: str, quick: bool, max_batch: int, loads: tuple) -> dict:
    """HF's batch-1 time per token, TTFT and `loads` through `model.generate`, in static batches
    of at most `max_batch` requests."""

    def generate(batch: list[list[int]], new_tokens: int) -> float:
        ids = torch.tensor(batch, device=device)
        sync(device)
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
        sync(device)
        return time.perf_counter() - start

    result: dict = {}
    generate(prompts(1, 16, vocab, 0), 4)                     # warm-up
    new_tokens = 8 if quick else 32
    one = prompts(1, 128, vocab, 1)
    first = statistics.median(generate(one, 1) for _ in range(3))
    full = statistics.median(generate(one, new_tokens + 1) for _ in range(2))
    result["tpot_ms_batch1"] = (full - first) / new_tokens * 1e3
    log(f"HF batch-1 time per output token {result['tpot_ms_batch1']:.2f} ms")
    result["ttft_ms"] = {}
    for length in TTFT_PROMPTS:
        result["ttft_ms"][str(length)] = statistics.median(
            generate(prompts(1, length, vocab, 2), 1) for _ in range(3)) * 1e3
        log(f"HF TTFT {length}: {result['ttft_ms'][str(length)]:.1f} ms")
    result["throughput"] = {}
    measured: dict = {}
    for concurrency, input_len, output_len in loads:
        batch = min(concurrency, max_batch)
        key = (batch, input_len, output_len)
        if key not in measured:
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            seconds = generate(prompts(batch, input_len, vocab, 3), output_len)
            measured[key] = batch * output_len / seconds
        name = f"{concurrency}x{input_len}/{output_len}"
        result["throughput"][name] = {"output_tokens_per_s": measured[key], "hf_batch": batch}
        log(f"HF {name} (static batches of {batch}): {measured[key]:.0f} tok/s")
    return result
