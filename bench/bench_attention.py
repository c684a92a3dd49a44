"""Decode attention: Kiln's paged split-K kernel against torch's SDPA and the bandwidth floor.

A decode step reads every live sequence's whole KV cache once per layer, so at batch 64 and a few
hundred tokens of context attention is a third of the step (bench/NOTES.md, run 5). For the
Llama-2-7B (MHA) and Llama-3-8B (GQA, 4 query heads per kv head) head shapes and a set of
(batch, context) loads, this prints per layer:

- the floor: K and V bytes over the device copy bandwidth measured in the same run;
- torch's `scaled_dot_product_attention` on contiguous [B, H, L, D] caches (what transformers
  runs; its flash kernel does not read a block table, so it is the unpaged peer);
- Kiln's `paged_attention.decode` with its default launch config and split count, and every
  point of a sweep (key tile, warps, pipeline depth, splits x1/x2/x4), the best named.

Calls are timed back to back inside a CUDA graph, each reading another layer's caches, the
caches together several times the L2 (as a decode step reads them). JSON to --json, a table last.
`--kv-cache-dtype int8|fp8` times Kiln over quantized caches (one byte per element plus a float32
scale per token and head; the floor counts those bytes; SDPA stays bf16).

    python3 bench/bench_attention.py --json attention.json
    python3 bench/bench_attention.py --no-sweep --kv-cache-dtype fp8
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import aligned_rows, git_commit, sweep_into  # noqa: E402
from decode_common import copy_bandwidth, log  # noqa: E402

HEADS = {"llama2-7b": (32, 32), "llama3-8b": (32, 8)}         # (query heads, kv heads)
HEAD_DIM = 128
BLOCK_SIZE = 16
# (batch, context): batch-1 decode at two prompt lengths; the 64- and 256-stream loads of
# bench_decode early and late in their 128-token outputs (contexts 129-256: a context that is
# not a multiple of the key tile leaves the last tile part empty), and 64 streams at 1024 + 128.
LOADS = ((1, 200), (1, 1024), (1, 4096), (64, 140), (64, 200), (64, 1152), (256, 160))
# The default launch shape again with splits of at least this many keys (`min_split_keys`):
# short contexts then run in one program with no merge, long ones in fewer splits.
MIN_SPLIT_KEYS = (0, 128, 256, 512, 1024)
SWEEP = dict(block_n=(16, 32, 64), num_warps=(2, 4, 8), num_stages=(2, 3),
             split_factor=(1, 2, 4))
# An 8-bit cache's loop is bound by instructions, not bytes: offline sm_90 SASS counts fewest
# per byte with one pipeline stage and wider tiles or fewer warps (4.6-4.9 against 7.05 for
# n64 w4 s2; bench/NOTES.md), which the 16-bit sweep never tries.
SWEEP_8BIT = dict(block_n=(32, 64, 128), num_warps=(1, 2, 4), num_stages=(1, 2),
                  split_factor=(1, 2))
DEFAULT_L2_BYTES = 50 << 20
# bf16 output rounding against a float32 reference over the same (dequantized) cache: 2-3e-3.
MAX_REL_ERR = 1e-2
KV_CACHE_DTYPES = {"bf16": None, "int8": torch.int8, "fp8": torch.float8_e4m3fn}


def sweep_points(default_splits: int, eight_bit: bool = False, min_split_keys: int = 0):
    """(launch config, splits) pairs: every tile shape at the default split count and at two
    (and, for 16-bit caches, four) times it (at most 32), with the default's fewest keys a
    split."""
    from runtime_service.model.kernels.attention_configs import DecodeConfig

    for block_n, warps, stages, factor in itertools.product(
            *(SWEEP_8BIT if eight_bit else SWEEP).values()):
        splits = default_splits * factor
        if splits <= 32 and (factor == 1 or block_n >= 32):
            yield DecodeConfig(block_n, warps, stages, min_split_keys), splits


def layer_caches(batch: int, context: int, num_kv_heads: int, l2_bytes: int,
                 generator: torch.Generator, cache_dtype: torch.dtype | None = None):
    """Enough layers' paged caches (shuffled block tables, as a long-running pool leaves them)
    that together they exceed the L2 three times; plus the same K/V laid out for SDPA. With a
    `cache_dtype` each layer is (k, v, k_scale, v_scale), quantized by the KV contract."""
    from runtime_service.model.kernels.kv_quant import quantize_kv_reference

    blocks_per_seq = math.ceil(context / BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq + 1
    tokens_heads = batch * context * num_kv_heads
    bytes_per_layer = 2 * tokens_heads * (HEAD_DIM * 2 if cache_dtype is None else HEAD_DIM + 4)
    layers = max(1, math.ceil(3 * l2_bytes / bytes_per_layer))
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM)
    paged = [(torch.randn(shape, device="cuda", dtype=torch.bfloat16),
              torch.randn(shape, device="cuda", dtype=torch.bfloat16)) for _ in range(layers)]
    if cache_dtype is not None:
        paged = [tuple(quantize_kv_reference(k, cache_dtype)) + tuple(
            quantize_kv_reference(v, cache_dtype)) for k, v in paged]
        paged = [(k, v, k_scale, v_scale) for k, k_scale, v, v_scale in paged]
    order = torch.randperm(num_blocks - 1, generator=generator) + 1
    tables = order.view(batch, blocks_per_seq).to(torch.int32).cuda()
    dense = [(torch.randn(batch, num_kv_heads, context, HEAD_DIM, device="cuda",
                          dtype=torch.bfloat16),
              torch.randn(batch, num_kv_heads, context, HEAD_DIM, device="cuda",
                          dtype=torch.bfloat16)) for _ in range(layers)]
    return paged, tables, dense, bytes_per_layer


def bench_load(model: str, batch: int, context: int, bandwidth: float, l2_bytes: int,
               sweep: bool, cache_dtype: torch.dtype | None = None) -> dict:
    from runtime_service.model.kernels import attention_configs
    from runtime_service.model.kernels import paged_attention as pa
    from runtime_service.model.kernels.tuning_clock import graph_time_per_call_us

    num_heads, num_kv_heads = HEADS[model]
    group = num_heads // num_kv_heads
    generator = torch.Generator().manual_seed(batch * 7919 + context)
    paged, tables, dense, kv_bytes = layer_caches(batch, context, num_kv_heads, l2_bytes,
                                                  generator, cache_dtype)
    q = torch.randn(batch, num_heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    scale = HEAD_DIM ** -0.5
    # The splits the runtime's graphs use: sized by the table width the graphs are built with.
    splits = attention_configs.decode_num_splits(
        batch, num_kv_heads, 4352, torch.cuda.get_device_properties(0).multi_processor_count)

    def kiln(config, num_splits=splits):
        return lambda q_, kv: pa.decode(q_, kv[0], kv[1], tables, lens, scale, num_splits,
                                        config=config, k_scale=kv[2] if cache_dtype else None,
                                        v_scale=kv[3] if cache_dtype else None)

    q4 = q[:, :, None, :]

    def sdpa(q_, kv):
        return torch.nn.functional.scaled_dot_product_attention(
            q4, kv[0], kv[1], scale=scale, enable_gqa=group > 1)

    reference = pa.decode_reference(q[:1], *paged[0][:2], tables[:1], lens[:1], scale,
                                    *paged[0][2:]).float()
    k_scale, v_scale = paged[0][2:] if cache_dtype else (None, None)

    def rel_err_of(config=None, num_splits=splits) -> float:
        out = pa.decode(q[:1], *paged[0][:2], tables[:1], lens[:1], scale, num_splits,
                        config=config, k_scale=k_scale, v_scale=v_scale).float()
        return ((out - reference).norm() / reference.norm()).item()

    def checked_time_us(point) -> float:
        """A sweep point's time, once its output matches the reference: a launch shape that
        computes wrong (Triton has miscompiled some, bench/NOTES.md run 16c) is left out."""
        err = rel_err_of(*point)
        if not err <= MAX_REL_ERR:          # NaN fails too
            raise ValueError(f"relative error {err:.2e} against the reference")
        return graph_time_per_call_us(kiln(*point), q, paged)

    rel_err = rel_err_of()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    default = attention_configs.default_decode_config(group, HEAD_DIM, batch * num_kv_heads, sms,
                                                      eight_bit=cache_dtype is not None)

    result = {"model": model, "batch": batch, "context": context, "splits": splits,
              "kv_bytes_per_layer": kv_bytes, "floor_us": kv_bytes / bandwidth * 1e6,
              "sdpa_us": graph_time_per_call_us(sdpa, q, dense),
              "kiln_default_config": str(default),
              "kiln_default_us": graph_time_per_call_us(kiln(None), q, paged),
              "kiln_rel_err_vs_reference": rel_err}
    result["kiln_min_split_keys_us"] = {
        str(keys): checked_time_us((dataclasses.replace(default, min_split_keys=keys), splits))
        for keys in MIN_SPLIT_KEYS}
    if sweep:
        sweep_into(result, ((f"{config} splits{num_splits}", (config, num_splits))
                            for config, num_splits in sweep_points(
                                splits, cache_dtype is not None, default.min_split_keys)),
                   checked_time_us, log)
    del paged, dense
    torch.cuda.empty_cache()
    log(f"{model} batch {batch} context {context}: floor {result['floor_us']:.1f} us, SDPA "
        f"{result['sdpa_us']:.1f}, Kiln {result['kiln_default_us']:.1f}"
        + (f", best {result['kiln_best_us']:.1f} [{result['kiln_best_config']}]" if sweep
           else "") + "; splits of at least K keys: "
        + ", ".join(f"{k} {us:.1f}" for k, us in result["kiln_min_split_keys_us"].items()))
    return result


def table(report: dict) -> str:
    bandwidth = report["copy_bandwidth_bytes_per_s"]
    header = ("model", "batch", "context", "floor us", "SDPA us", "Kiln us", "TB/s", "best us",
              "TB/s", "best config")
    rows = [header]
    for c in report["cases"]:
        rate = lambda us: f"{c['kv_bytes_per_layer'] / us / 1e6:.2f}"  # noqa: E731
        best = c.get("kiln_best_us")
        rows.append((c["model"], str(c["batch"]), str(c["context"]), f"{c['floor_us']:.1f}",
                     f"{c['sdpa_us']:.1f}", f"{c['kiln_default_us']:.1f}",
                     rate(c["kiln_default_us"]), f"{best:.1f}" if best else "-",
                     rate(best) if best else "-", c.get("kiln_best_config", "-")))
    lines = [f"== decode attention per layer on {report['device_name']} (copy bandwidth "
             f"{bandwidth / 1e12:.2f} TB/s read+write; Kiln default "
             f"{report['cases'][0]['kiln_default_config']}) =="]
    lines += aligned_rows(rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(HEADS))
    parser.add_argument("--no-sweep", action="store_true", help="time the default config only")
    parser.add_argument("--kv-cache-dtype", choices=tuple(KV_CACHE_DTYPES), default="bf16")
    parser.add_argument("--loads", help="BATCHxCONTEXT,... instead of the default loads "
                        "(e.g. 64x1152,256x160)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    loads = LOADS
    if args.loads:
        try:
            loads = [tuple(int(n) for n in load.split("x")) for load in args.loads.split(",")]
        except ValueError:
            parser.error(f"--loads takes BATCHxCONTEXT pairs, got {args.loads!r}")
        if any(len(load) != 2 or min(load) < 1 for load in loads):
            parser.error(f"--loads takes BATCHxCONTEXT pairs of positive sizes, got {args.loads!r}")
    if not torch.cuda.is_available():
        print("bench_attention needs a CUDA device", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    bandwidth = copy_bandwidth("cuda")
    l2_bytes = getattr(props, "L2_cache_size", 0) or DEFAULT_L2_BYTES
    report = {"device_name": props.name, "torch": torch.__version__, "commit": git_commit(),
              "copy_bandwidth_bytes_per_s": bandwidth, "kv_cache_dtype": args.kv_cache_dtype,
              "cases": []}
    with torch.inference_mode():
        for model in args.models.split(","):
            for batch, context in loads:
                report["cases"].append(bench_load(model, batch, context, bandwidth, l2_bytes,
                                                  not args.no_sweep,
                                                  KV_CACHE_DTYPES[args.kv_cache_dtype]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
