"""Prefill attention: Kiln's paged causal kernel against torch's SDPA, per layer, with a sweep.

A 1024-token prompt of Llama-3-8B spends about 1.6 ms of its 22 ms prefill in attention (32
layers of the paged kernel), and a 4096-token one about a quarter of its 100 ms, so the kernel's
tiles matter for time to first token and for the prefill half of long-prompt loads. For the
Llama-3-8B (GQA, 4 query heads per kv head) and Llama-2-7B (MHA) head shapes and a set of
(sequences, new tokens, cached context) loads, this prints per layer:

- torch's `scaled_dot_product_attention` on contiguous [B, H, L, D] tensors (its flash kernel
  reads no block table, so it is the unpaged peer; causal from the bottom right where a cached
  context precedes the new tokens);
- Kiln's `paged_attention.prefill` with its default launch config, and every point of a sweep
  (query tile, key tile, warps, pipeline depth, launch order), the best named;
- for a step of one sequence, Kiln's `flash_prefill` (the "triton-flash" backend): flash over
  the new tokens, the cached context paged in after by log-sum-exp;
- the rate each reaches in TFLOP/s (the causal products: 4 x head_dim flops per query head and
  visible key).

Calls are timed back to back inside a CUDA graph (`tuning_clock.graph_time_per_call_us`), cycling
over a few layers' caches. JSON to --json, a table last.

    python3 bench/bench_prefill_attention.py --json prefill_attention.json
    python3 bench/bench_prefill_attention.py --no-sweep --models llama3-8b
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import aligned_rows, git_commit, sweep_into  # noqa: E402
from decode_common import log  # noqa: E402

HEADS = {"llama3-8b": (32, 8), "llama2-7b": (32, 32)}         # (query heads, kv heads)
HEAD_DIM = 128
BLOCK_SIZE = 16
LAYERS = 3
# (sequences, new tokens each, cached context each): one prompt at the TTFT lengths, a prompt
# whose first half came from the prefix cache, and a step of eight 256-token prefills.
LOADS = ((1, 128, 0), (1, 1024, 0), (1, 4096, 0), (1, 512, 512), (8, 256, 0))
SWEEP = dict(block_m=(64, 128), block_n=(32, 64, 128), num_warps=(4, 8), num_stages=(2, 3),
             heavy_first=(False, True))


def causal_flops(num_seqs: int, new: int, context: int, num_heads: int) -> int:
    """QK^T and PV products over the keys each query row sees (its context and the rows up to
    its own)."""
    visible = new * context + new * (new + 1) // 2
    return 4 * HEAD_DIM * num_heads * num_seqs * visible


def paged_inputs(num_seqs: int, new: int, context: int, num_heads: int, num_kv_heads: int,
                 generator: torch.Generator):
    """q for the new tokens; LAYERS layers of paged caches holding context + new tokens per
    sequence (shuffled block tables); the same K/V dense for SDPA."""
    seq_len = context + new
    blocks_per_seq = -(-seq_len // BLOCK_SIZE)
    num_blocks = num_seqs * blocks_per_seq + 1
    order = torch.randperm(num_blocks - 1, generator=generator) + 1
    tables = order.view(num_seqs, blocks_per_seq).to(torch.int32).cuda()
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM)
    paged = [(torch.randn(shape, device="cuda", dtype=torch.bfloat16),
              torch.randn(shape, device="cuda", dtype=torch.bfloat16)) for _ in range(LAYERS)]
    # each layer's new k and v rows [T, Hkv, D] as the caches hold them (flash reads these)
    positions = torch.arange(context, seq_len, device="cuda")
    slots = (tables[:, positions // BLOCK_SIZE].long() * BLOCK_SIZE
             + positions % BLOCK_SIZE).flatten()
    paged = [(k, v, k.flatten(0, 1)[slots], v.flatten(0, 1)[slots]) for k, v in paged]
    dense = [(torch.randn(num_seqs, num_heads, seq_len, HEAD_DIM, device="cuda",
                          dtype=torch.bfloat16),
              torch.randn(num_seqs, num_heads, seq_len, HEAD_DIM, device="cuda",
                          dtype=torch.bfloat16)) for _ in range(LAYERS)]
    q = torch.randn(num_seqs * new, num_heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    starts = torch.arange(0, num_seqs * new + 1, new, dtype=torch.int32, device="cuda")
    lens = torch.full((num_seqs,), seq_len, dtype=torch.int32, device="cuda")
    return q, paged, tables, starts, lens, dense


def sweep_configs():
    from runtime_service.model.kernels.attention_configs import PrefillConfig

    for values in itertools.product(*SWEEP.values()):
        yield PrefillConfig(*values)


def bench_load(model: str, num_seqs: int, new: int, context: int, sweep: bool) -> dict:
    from torch.nn.attention.bias import causal_lower_right

    from runtime_service.model.kernels import flash_prefill as fp
    from runtime_service.model.kernels import attention_configs
    from runtime_service.model.kernels import paged_attention as pa
    from runtime_service.model.kernels.tuning_clock import graph_time_per_call_us

    num_heads, num_kv_heads = HEADS[model]
    generator = torch.Generator().manual_seed(num_seqs * 7919 + new + context)
    q, paged, tables, starts, lens, dense = paged_inputs(num_seqs, new, context, num_heads,
                                                         num_kv_heads, generator)
    scale = HEAD_DIM ** -0.5

    def kiln(config):
        return lambda q_, kv: pa.prefill(q_, kv[0], kv[1], tables, starts, lens, new, scale,
                                         config=config)

    def flash(q_, kv):
        return fp.flash_prefill(q_, kv[2], kv[3], kv[0], kv[1], tables, starts, lens, new, scale)

    q_dense = q.view(num_seqs, new, num_heads, HEAD_DIM).transpose(1, 2).contiguous()
    mask = causal_lower_right(new, context + new) if context else None

    def sdpa(q_, kv):
        if mask is None:
            return torch.nn.functional.scaled_dot_product_attention(
                q_dense, kv[0], kv[1], scale=scale, is_causal=True)
        return torch.nn.functional.scaled_dot_product_attention(
            q_dense, kv[0], kv[1], attn_mask=mask, scale=scale)

    check = pa.prefill(q, *paged[0][:2], tables, starts, lens, new, scale).float()
    reference = pa.prefill_reference(q, *paged[0][:2], tables, starts, lens, scale).float()
    rel_err = ((check - reference).norm() / reference.norm()).item()
    flops = causal_flops(num_seqs, new, context, num_heads)
    try:
        sdpa_us = graph_time_per_call_us(sdpa, q, dense)
    except Exception as exc:  # noqa: BLE001 - a peer this torch cannot capture is reported
        log(f"  SDPA failed: {exc!r}"[:200])
        sdpa_us = None
    result = {"model": model, "num_seqs": num_seqs, "new_tokens": new, "context": context,
              "flops": flops, "sdpa_us": sdpa_us,
              "kiln_default_config": str(attention_configs.default_prefill_config(HEAD_DIM, new)),
              "kiln_default_us": graph_time_per_call_us(kiln(None), q, paged),
              "kiln_flash_us": (graph_time_per_call_us(flash, q, paged) if num_seqs == 1
                                else None),
              "kiln_rel_err_vs_reference": rel_err}
    if sweep:
        sweep_into(result, ((str(config), config) for config in sweep_configs()),
                   lambda config: graph_time_per_call_us(kiln(config), q, paged), log)
    del paged, dense
    torch.cuda.empty_cache()
    log(f"{model} {num_seqs} x {new} new after {context}: SDPA {_us(sdpa_us)} us, "
        f"Kiln {result['kiln_default_us']:.1f}, flash prefill {_us(result['kiln_flash_us'])}"
        + (f", best {result['kiln_best_us']:.1f} [{result['kiln_best_config']}]" if sweep
           else ""))
    return result


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(report: dict) -> str:
    header = ("model", "seqs x new", "context", "SDPA us", "TFLOP/s", "Kiln us", "TFLOP/s",
              "Kiln/SDPA", "flash us", "flash/SDPA", "best us", "best config")
    rows = [header]
    for c in report["cases"]:
        rate = lambda us: "-" if us is None else f"{c['flops'] / us / 1e6:.0f}"  # noqa: E731
        sdpa, kiln, best = c["sdpa_us"], c["kiln_default_us"], c.get("kiln_best_us")
        flash = c.get("kiln_flash_us")
        rows.append((c["model"], f"{c['num_seqs']} x {c['new_tokens']}", str(c["context"]),
                     _us(sdpa), rate(sdpa), _us(kiln), rate(kiln),
                     f"{kiln / sdpa:.2f}" if sdpa else "-", _us(flash),
                     f"{flash / sdpa:.2f}" if sdpa and flash else "-", _us(best),
                     c.get("kiln_best_config", "-")))
    lines = [f"== prefill attention per layer on {report['device_name']} =="]
    lines += aligned_rows(rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(HEADS))
    parser.add_argument("--no-sweep", action="store_true", help="time the default config only")
    parser.add_argument("--sweep-models", default="llama3-8b",
                        help="the models whose loads are swept (the others time the default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_prefill_attention needs a CUDA device", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    report = {"device_name": props.name, "torch": torch.__version__, "commit": git_commit(),
              "cases": []}
    swept = set(args.sweep_models.split(","))
    with torch.inference_mode():
        for model in args.models.split(","):
            for num_seqs, new, context in LOADS:
                report["cases"].append(bench_load(model, num_seqs, new, context,
                                                  not args.no_sweep and model in swept))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
