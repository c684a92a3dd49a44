"""Which of torch's fused attention kernels runs a causal prefill of one sequence fastest on this
GPU, beside the one Kiln's flash prefill picks (kernels/flash_prefill.py: `fused_kernel`).

Llama-3-8B heads (32 query, 8 kv, 128 dims), bf16, the layout the prefill has (rows [T, H, D]
seen as [1, H, T, D]); each kernel is timed in a CUDA graph of 20 calls, the median of 10
replays.

Rows: SDPA as it chooses on contiguous tensors with repeated kv heads; each SDPA backend forced;
aten's flash and cuDNN entry points with the log-sum-exp (what flash prefill calls, grouped
heads read in place); Kiln's `causal_flash`. A kernel this GPU or torch lacks is reported.

  python bench/bench_fused_attention.py --json results/fused_attention.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings

import torch

from bench_common import aligned_rows, git_commit

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
GRAPH_CALLS = 20


def graph_us(fn) -> float | str:
    """Median time per call of `fn()` replayed in a graph (the GEMV tuner's clock), or why it
    could not run."""
    from runtime_service.model.kernels.tuning_clock import graph_time_per_call_us

    try:
        return graph_time_per_call_us(lambda _x, _w: fn(), None, [None], calls=GRAPH_CALLS,
                                      replays=10)
    except Exception as exc:  # noqa: BLE001 - a kernel this GPU lacks is reported, not fatal
        return f"unavailable ({type(exc).__name__})"


def kernels_for(tokens: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from runtime_service.model.kernels import flash_prefill as fp

    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, k, v = (torch.randn(tokens, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
               for heads in (HEADS, KV_HEADS, KV_HEADS))
    q4, k4, v4 = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))
    k_full, v_full = (t.repeat_interleave(HEADS // KV_HEADS, dim=1).contiguous() for t in (k4, v4))
    q_full = q4.contiguous()
    scale = HEAD_DIM ** -0.5

    def forced(backend):
        def run():
            with sdpa_kernel(backend):
                return sdpa(q_full, k_full, v_full, is_causal=True, scale=scale)
        return run

    return {
        "SDPA, its own choice": lambda: sdpa(q_full, k_full, v_full, is_causal=True, scale=scale),
        "SDPA forced to cuDNN": forced(SDPBackend.CUDNN_ATTENTION),
        "SDPA forced to flash": forced(SDPBackend.FLASH_ATTENTION),
        "SDPA forced to efficient": forced(SDPBackend.EFFICIENT_ATTENTION),
        "aten cuDNN + lse, grouped": lambda: fp._cudnn(q4, k4, v4, scale),
        "aten flash + lse, grouped": lambda: fp._flash(q4, k4, v4, scale),
        f"Kiln causal_flash ({fp.fused_kernel(q, k)})": lambda: fp.causal_flash(q, k, v, scale),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="1024,4096", help="prompt lengths, comma-separated")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    warnings.filterwarnings("ignore")           # SDPA explains each backend it skips
    results = {}
    for tokens in (int(t) for t in args.tokens.split(",")):
        results[tokens] = {name: graph_us(fn) for name, fn in kernels_for(tokens).items()}
    names = list(next(iter(results.values())))
    rows = [["kernel", *(f"{t} tokens us" for t in results)]]
    rows += [[name, *(f"{r[name]:.1f}" if isinstance(r[name], float) else r[name]
                      for r in results.values())] for name in names]
    print(f"== causal prefill attention of one sequence on {torch.cuda.get_device_name()} ==")
    print("\n".join(aligned_rows(rows)))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "commit": git_commit(), "host": platform.node(),
                       "heads": [HEADS, KV_HEADS, HEAD_DIM], "us": results}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
