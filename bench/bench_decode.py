"""Kiln vs HF transformers on random-weight LLaMA shapes, same GPU, same run.

Reports, for each side: batch-1 time per output token, time to first token for 128/1024/4096-token
prompts, output tokens/s for 64 and 256 concurrent requests of 128-in/128-out and 1024-in/256-out,
plus the bandwidth floor (weight bytes over measured device copy bandwidth) and whether Kiln's
greedy tokens equal the torch reference backend's on the same engine. JSON to --json, a table last.

    python3 bench/bench_decode.py --model llama2-7b --json out.json
    python3 bench/bench_decode.py --model tiny --device cpu --quick     # smoke test of the script
    python3 bench/bench_decode.py --model llama2-7b --grpc              # also through a runtime pod
    python3 bench/bench_decode.py --model llama3-8b --skip-hf --quant W4A16_AWQ,FP8 \
        --kv-quant FP8 --json quant.json     # quantized engines beside the bf16 one
    python3 bench/bench_decode.py --model llama3-8b --skip-hf --skip-reference --grpc \
        --grpc-metrics both --grpc-rounds 2 --json metrics.json   # /metrics off vs on, alternated
    python3 bench/bench_decode.py --model llama3-8b --skip-hf --skip-reference --grpc \
        --grpc-engine-core thread,process --json core.json   # the engine core: thread vs process

--quant runs, after the bf16 engine, one engine per listed algorithm (weights quantized in memory
by the builder's transform; bench/quant_engine.py) through the same batch-1 and loads, each
beside the bandwidth floor of the bytes it reads per token.
Weights are random (speed does not depend on their values). HF runs static batches of at most
--hf-max-batch requests (its memory grows with the batch); its tokens/s for a larger concurrency is
that of its largest batch, which is what serving such a load with `generate` would give.

The shared shapes and helpers are decode_common.py; HF's side decode_hf.py, the pods
decode_pods.py (through grpc_load.py), the profiles decode_profiles.py, the table decode_report.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_common import (SHAPES, TTFT_PROMPTS, build_hf, copy_bandwidth,  # noqa: E402
                           fixed_length, kiln_from_hf, kiln_generate_timed, log, prompts,
                           weight_bytes)
from decode_hf import bench_hf  # noqa: E402
from decode_pods import (bench_through_grpc, engine_core_ratios,  # noqa: E402
                         metrics_overhead, parse_engine_cores)
from decode_profiles import profile_prefill_host, write_kernel_tables  # noqa: E402
from decode_report import table  # noqa: E402
from runtime_service.engine.executor import Executor, ExecutorOptions  # noqa: E402
from runtime_service.engine.request import Request, SamplingParams  # noqa: E402
from runtime_service.format.engine_config import BuildConfig, EngineConfig  # noqa: E402
from runtime_service.model import kernels  # noqa: E402
from runtime_service.model.layers.attention import TorchReferenceAttention  # noqa: E402
from runtime_service.model.loader import LoadedModel  # noqa: E402
from runtime_service.server.heap import start_up_heap_aside  # noqa: E402

# TTFT is measured twice: back to back (right after the batch-1 run, as before), and one
# request after this many idle seconds. An H200 runs a burst of large GEMMs up to 17% slower
# once it has been busy for ~40 ms (bench/NOTES.md, run 16), so a back-to-back loop measures a
# GPU under sustained load, and the idle figure is what a lone request to an idle server sees.
TTFT_IDLE_S = 1.0
LOADS = ((64, 128, 128), (256, 128, 128), (64, 1024, 256), (256, 1024, 256))
QUICK_LOADS = ((64, 128, 128),)
_chosen_loads: tuple | None = None          # --loads
_ttft_idle_s = TTFT_IDLE_S                  # --ttft-idle-s


def loads_for(quick: bool) -> tuple:
    """The throughput loads to run: --loads if given, else the quick or the full set."""
    return _chosen_loads or (QUICK_LOADS if quick else LOADS)


def parse_loads(text: str) -> tuple:
    """'64x128/128,256x128/128' -> ((64, 128, 128), (256, 128, 128))."""
    loads = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)x(\d+)/(\d+)", part.strip())
        if not match:
            raise argparse.ArgumentTypeError(f"a load is CONCURRENCYxINPUT/OUTPUT, got {part!r}")
        loads.append(tuple(int(g) for g in match.groups()))
    return tuple(loads)


# ---- Kiln ------------------------------------------------------------------------------------

def bench_kiln(executor: Executor, vocab: int, device: str, quick: bool) -> dict:
    result: dict = {"attention_backend": executor.runner.attention_name,
                    "cuda_graphs": executor.runner.graphs is not None,
                    "programmatic_dependent_launch": False}
    if device == "cuda":
        from runtime_service.model.kernels import pdl   # Triton: CUDA machines only
        result["programmatic_dependent_launch"] = pdl.ENABLED
        result["pdl_trigger"] = pdl.TRIGGER      # KILN_PDL_TRIGGER: exit or start
    ids = iter(range(1 << 30))
    req = lambda p, n: Request(f"r{next(ids)}", p, fixed_length(n))  # noqa: E731
    kiln_generate_timed(executor, [req(p, 4) for p in prompts(3, 1024, vocab, 9)])     # warm-up
    kiln_generate_timed(executor, [req(p, 4) for p in prompts(2, 7, vocab, 9)])
    if device == "cuda":
        torch.cuda.synchronize()
        result["memory_reserved_bytes_warm"] = torch.cuda.memory_reserved()

    result["tpot_ms_batch1"] = batch1_tpot_ms(executor, vocab, quick)

    result["ttft_ms"], result["ttft_idle_ms"] = {}, {}
    for length in TTFT_PROMPTS:
        # other prompts after idle, so a server with block reuse cannot serve them from cache
        for key, idle_s, seeds in (("ttft_ms", 0.0, 20), ("ttft_idle_ms", _ttft_idle_s, 30)):
            times = []
            for seed in range(seeds, seeds + 3):
                time.sleep(idle_s)
                _, [(first, _, _)] = kiln_generate_timed(
                    executor, [req(prompts(1, length, vocab, seed)[0], 1)])
                times.append(first)
            result[key][str(length)] = statistics.median(times) * 1e3
        log(f"Kiln TTFT {length}: {result['ttft_ms'][str(length)]:.1f} ms back to back, "
            f"{result['ttft_idle_ms'][str(length)]:.1f} ms after {_ttft_idle_s:g} s idle")

    result["throughput"] = {}
    for load in loads_for(quick):
        name, result["throughput"][name] = load_throughput(executor, vocab, load)
    if device == "cuda":
        torch.cuda.synchronize()
        result["memory_reserved_bytes_end"] = torch.cuda.memory_reserved()
    return result


def batch1_tpot_ms(executor: Executor, vocab: int, quick: bool, label: str = "Kiln") -> float:
    """Best of two single-request runs: (last token - first token) / tokens after the first."""
    new_tokens = 32 if quick else 128
    tpots = []
    for run in range(2):
        request = Request(f"tpot-{label}-{run}", prompts(1, 128, vocab, 1)[0],
                          fixed_length(new_tokens + 1))
        _, [(first, last, _)] = kiln_generate_timed(executor, [request])
        tpots.append((last - first) / new_tokens)
    log(f"{label} batch-1 time per output token {min(tpots) * 1e3:.2f} ms "
        f"(runs {[round(t * 1e3, 3) for t in tpots]})")
    return min(tpots) * 1e3


def load_throughput(executor: Executor, vocab: int, load: tuple[int, int, int],
                    label: str = "Kiln") -> tuple[str, dict]:
    """All requests of a load submitted at once; output tokens over the wall time to the last.
    Loads of short prompts (about a second each) run three times and report the median wall:
    one run of them varied by 2-3% from run to run."""
    concurrency, input_len, output_len = load
    name = f"{concurrency}x{input_len}/{output_len}"
    walls = []
    for run in range(3 if input_len <= 128 else 1):
        batch = [Request(f"{label}-{name}-{run}-{i}", p, fixed_length(output_len))
                 for i, p in enumerate(prompts(concurrency, input_len, vocab, 3 + run))]
        steps_before, overlapped_before = executor.num_steps, executor.num_overlapped_steps
        wall, per_request = kiln_generate_timed(executor, batch)
        assert all(len(t) == output_len for _, _, t in per_request)
        walls.append(wall)
    wall = statistics.median(walls)
    figures = {"output_tokens_per_s": concurrency * output_len / wall, "wall_s": wall,
               "walls_s": walls, "steps": executor.num_steps - steps_before,
               "overlapped_steps": executor.num_overlapped_steps - overlapped_before}
    # Fresh prompts of the same length with one output token each: the load's prefill alone,
    # which no decode kernel or KV dtype shortens (bench/NOTES.md, run 27's FP8 KV mark).
    prefill_only = [Request(f"{label}-{name}-prefill-{i}", p, fixed_length(1))
                    for i, p in enumerate(prompts(concurrency, input_len, vocab, 101))]
    figures["prefill_alone_s"], _ = kiln_generate_timed(executor, prefill_only)
    log(f"{label} {name}: {figures['output_tokens_per_s']:.0f} tok/s, median wall {wall:.2f} s "
        f"of {[round(w, 3) for w in walls]}, {figures['steps']} steps "
        f"({figures['overlapped_steps']} overlapped) in the last run; the prefill alone "
        f"{figures['prefill_alone_s']:.2f} s")
    return name, figures


def bench_quantized(state: dict[str, torch.Tensor], config: EngineConfig, dtype: torch.dtype,
                    device: str, variants: list, vocab: int, quick: bool,
                    bandwidth: float | None, profile: Path | None = None,
                    profile_batches: tuple[int, ...] = (1,), profile_prompt_len: int = 128) -> dict:
    """Batch-1 and the loads for each quantized engine, one at a time, each beside the floor of
    the weight bytes it reads per token; with `profile`, each engine's decode kernel tables at
    `profile_batches` too (`<profile stem>_<engine>_b<batch>.txt`)."""
    from quant_engine import AWQ_NOTE, bytes_read_per_token, quantized_model
    results = {}
    for variant in variants:
        log(f"building the {variant.name} engine")
        loaded = quantized_model(state, config, dtype, device, variant)
        entry: dict = {"algo": variant.algo, "group_size": variant.group_size,
                       "kv_cache_dtype": variant.kv_cache_dtype,
                       "weight_bytes_read_per_token": bytes_read_per_token(loaded.model)}
        if variant.algo == "W4A16_AWQ":
            entry["note"] = AWQ_NOTE
            log(AWQ_NOTE)
        if bandwidth:
            entry["bandwidth_floor_ms"] = entry["weight_bytes_read_per_token"] / bandwidth * 1e3
        executor = Executor(loaded, ExecutorOptions(device=device, dtype=str(dtype).split(".")[1],
                                                    load_tokenizer=False)).start()
        entry["kv_cache_tokens"] = executor.kv.num_total_blocks * executor.options.block_size
        with start_up_heap_aside("bench"):
            try:
                warm = [Request(f"{variant.name}-warm-{i}", p, fixed_length(4)) for i, p
                        in enumerate(prompts(3, 1024, vocab, 9) + prompts(2, 7, vocab, 9))]
                kiln_generate_timed(executor, warm)
                entry["tpot_ms_batch1"] = batch1_tpot_ms(executor, vocab, quick, variant.name)
                if profile is not None:
                    slug = re.sub(r"[^A-Za-z0-9]+", "_", variant.name).strip("_")
                    write_kernel_tables(executor, vocab, profile.with_name(
                        f"{profile.stem}_{slug}"), profile_batches, profile_prompt_len)
                entry["throughput"] = dict(load_throughput(executor, vocab, load, variant.name)
                                           for load in loads_for(quick))
            finally:
                executor.shutdown()
        del executor, loaded            # unfrozen again: the collection can free them
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        results[variant.name] = entry
    return results


def bench_ablations(executor: Executor, vocab: int, quick: bool) -> dict:
    """Batch-1 and 64x128/128 again with one fast-path piece switched off at a time, so each
    piece's effect is measured in the same run on the same engine."""
    from runtime_service.model.layers import linear

    overlap_was = executor.overlap
    switches = {"no_overlap": lambda on: setattr(executor, "overlap", on and overlap_was)}
    graphs = executor.runner.graphs

    def gemv(on: bool) -> None:
        linear.set_small_batch_gemv(on)
        if graphs is not None:
            graphs.capture()          # a captured graph keeps the linears it was captured with
    switches["no_gemv"] = gemv
    result = {}
    for name, switch in switches.items():
        switch(False)
        try:
            result[name] = {"tpot_ms_batch1": batch1_tpot_ms(executor, vocab, quick, name)}
            load_name, figures = load_throughput(executor, vocab, QUICK_LOADS[0], name)
            result[name]["throughput"] = {load_name: figures}
        finally:
            switch(True)
    return result


def greedy_outputs(executor: Executor, vocab: int, new_tokens: int) -> list[tuple[list, list]]:
    """(tokens, logprobs) of greedy continuations of four prompts run as one batch."""
    lengths = (7, 128, 300, 1030)
    params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, end_id=-1,
                            logprobs=True)
    streams = [executor.submit(Request(f"g{i}", prompts(1, n, vocab, 40 + i)[0], params))
               for i, n in enumerate(lengths)]
    results = []
    for stream in streams:
        tokens, logprobs = [], []
        for out in stream:
            tokens.extend(out.new_token_ids)
            logprobs.extend(out.new_logprobs)
        results.append((tokens, logprobs))
    return results


def compare_with_reference(loaded: LoadedModel, fast: list[list[int]], vocab: int,
                           new_tokens: int, device: str) -> dict:
    """Same weights, torch reference attention, no fused kernels, no graphs."""
    loaded.model.set_attention_backend(TorchReferenceAttention(
        loaded.model.args.num_heads, loaded.model.args.num_kv_heads, loaded.model.args.head_dim))
    with kernels.disabled():
        executor = Executor(loaded, ExecutorOptions(
            device=device, dtype="bfloat16", kv_max_tokens=8192, attention_backend="torch",
            cuda_graph_max_batch_size=0, load_tokenizer=False)).start()
        try:
            reference = greedy_outputs(executor, vocab, new_tokens)
        finally:
            executor.shutdown()
    first_diff, logprob_diff, mean_logprob = [], [], []
    for (a, lp_a), (b, lp_b) in zip(fast, reference):
        diverge = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        first_diff.append(diverge)
        same = len(a) if diverge is None else diverge + 1      # logprobs agree up to here
        logprob_diff.append(max(abs(x - y) for x, y in zip(lp_a[:same], lp_b[:same])))
        mean_logprob.append(statistics.mean(lp_a))
    return {"identical": [t for t, _ in fast] == [t for t, _ in reference],
            "first_divergence_per_prompt": first_diff,
            "max_abs_logprob_diff_until_divergence": logprob_diff,
            "mean_chosen_logprob": mean_logprob,
            "uniform_logprob": -math.log(vocab), "new_tokens": new_tokens}


# ---- main ----------------------------------------------------------------------------------

def bench_in_process(loaded: LoadedModel, args, report: dict, device: str, dtype: torch.dtype,
                     vocab: int) -> None:
    """Kiln's executor in this process: the loads, the optional ablations and profiles, and
    greedy tokens against the reference model; figures go into `report`."""
    start = time.perf_counter()
    executor = Executor(loaded, ExecutorOptions(device=device, dtype=str(dtype).split(".")[1],
                                                load_tokenizer=False,
                                                attention_backend=args.attention_backend)).start()
    report["kiln_start_s"] = time.perf_counter() - start
    report["kv_cache_tokens"] = executor.kv.num_total_blocks * executor.options.block_size
    log(f"Kiln executor up in {report['kiln_start_s']:.1f} s, KV cache "
        f"{report['kv_cache_tokens']} tokens")
    # the garbage collector as the pod's processes set it, so the two compare alike
    with start_up_heap_aside("bench"):
        try:
            report["kiln"] = bench_kiln(executor, vocab, device, args.quick)
            log("in-process result " + json.dumps(report["kiln"], default=str))
            if args.ablations:
                report["kiln_ablations"] = bench_ablations(executor, vocab, args.quick)
            if args.profile:
                write_kernel_tables(executor, vocab, args.profile.with_name(args.profile.stem),
                                    args.profile_batches, args.profile_prompt_len)
                profile_prefill_host(executor, vocab, 1024, args.profile.with_name(
                    f"{args.profile.stem}_host_prefill.txt"))
            fast = greedy_outputs(executor, vocab, 32)
        finally:
            executor.shutdown()
    del executor
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_reference:
        report["greedy_vs_reference"] = compare_with_reference(loaded, fast, vocab, 32, device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="llama2-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-in-process", action="store_true",
                        help="only the pods (--grpc): for a pod-against-pod comparison whose "
                        "in-process figures come from another run")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and one load")
    parser.add_argument("--hf-max-batch", type=int, default=64)
    parser.add_argument("--loads", type=parse_loads,
                        help="throughput loads instead of the default set, e.g. 256x128/128")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="write decode kernel tables (at "
                        "--profile-batches), one of the largest batch's prefill, and a host "
                        "profile of a 1024-token prefill")
    parser.add_argument("--profile-batches", default=(1, 64),
                        type=lambda text: tuple(int(b) for b in text.split(",")),
                        help="running sequences of each decode kernel table, e.g. 1,64,256")
    parser.add_argument("--profile-prompt-len", type=int, default=128,
                        help="prompt tokens of each sequence in the decode kernel tables")
    parser.add_argument("--ablations", action="store_true",
                        help="also measure batch-1 and 64x128/128 with overlapped scheduling "
                             "(and the small-batch GEMV) switched off")
    parser.add_argument("--grpc", action="store_true",
                        help="also run the loads through a runtime pod over gRPC")
    parser.add_argument("--grpc-metrics", choices=("off", "on", "both"), default="off",
                        help="the gRPC pod's Prometheus /metrics (--metrics-listen), scraped "
                        "every --scrape-interval-s while on; both: one pod each, and the "
                        "throughput lost with metrics on")
    parser.add_argument("--scrape-interval-s", type=float, default=1.0)
    parser.add_argument("--grpc-rounds", type=int, default=1,
                        help="pods per setting, alternating (off, on, off, on with "
                        "--grpc-metrics both); figures are medians over a setting's pods")
    parser.add_argument("--grpc-engine-core", type=parse_engine_cores, default=("process",),
                        help="the pod's --engine-core, comma-separated to run one pod each and "
                        "print them side by side (thread,process)")
    parser.add_argument("--quant", default="",
                        help="also run engines with these weight quantizations after the bf16 "
                        "one, comma-separated: W4A16_AWQ, W4A16, W8A16, FP8")
    parser.add_argument("--group-size", type=int, default=128, help="int4 group size")
    parser.add_argument("--kv-quant", choices=("NONE", "INT8", "FP8"), default="NONE",
                        help="KV cache of the --quant engines (alone: a bf16-weights engine "
                        "with this KV cache)")
    parser.add_argument("--attention-backend", default="auto",
                        help="the in-process executor's and the pods' attention backend: auto, "
                        "triton, or triton-flash (flash for a prefill of one sequence)")
    parser.add_argument("--ttft-idle-s", type=float, default=TTFT_IDLE_S,
                        help="idle seconds before each request of the idle-GPU TTFT figures")
    args = parser.parse_args(argv)
    if args.profile:
        args.profile.parent.mkdir(parents=True, exist_ok=True)
    from quant_engine import variants_for
    try:
        variants = variants_for(args.quant, args.group_size, args.kv_quant)
    except Exception as exc:  # noqa: BLE001 - a bad flag is a usage error, said before any work
        parser.error(str(exc))
    if args.skip_in_process and (variants or not args.grpc):
        parser.error("--skip-in-process runs only the pods: it needs --grpc and no --quant")
    global _chosen_loads, _ttft_idle_s
    _chosen_loads = args.loads
    _ttft_idle_s = args.ttft_idle_s

    device = args.device
    shape = SHAPES[args.model]
    vocab = shape["vocab_size"]
    report: dict = {"model": args.model, "device": device,
                    "attention_backend_option": args.attention_backend,
                    "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "torch": torch.__version__}
    bandwidth = copy_bandwidth(device)
    log("building random-weight model", args.model)
    hf_model, hf_config = build_hf(shape, device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    report["weight_bytes"] = weight_bytes(hf_model)
    if bandwidth:
        report["copy_bandwidth_bytes_per_s"] = bandwidth
        report["bandwidth_floor_ms"] = report["weight_bytes"] / bandwidth * 1e3
        log(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; floor "
            f"{report['bandwidth_floor_ms']:.2f} ms/token")
    if not args.skip_hf:
        report["hf"] = bench_hf(hf_model, vocab, device, args.quick, args.hf_max_batch,
                              loads_for(args.quick))
    build = BuildConfig(dtype="bfloat16", max_batch_size=256, max_input_len=4096,
                        max_seq_len=4096 + 256, max_num_tokens=8192)
    loaded = (None if args.skip_in_process
              else kiln_from_hf(hf_model, hf_config, dtype, device, build))
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    if args.grpc:
        hf_model.to(dtype).save_pretrained(str(work / "hf"), safe_serialization=True)
    del hf_model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if loaded is not None:
        bench_in_process(loaded, args, report, device, dtype, vocab)
    if variants:
        from quant_engine import bytes_read_per_token, float_state
        report["weight_bytes_read_per_token"] = bytes_read_per_token(loaded.model)
        if bandwidth:
            report["bandwidth_floor_read_ms"] = (report["weight_bytes_read_per_token"]
                                                 / bandwidth * 1e3)
        state, config = float_state(loaded), loaded.config
        del loaded
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        report["quantized"] = bench_quantized(state, config, dtype, device, variants, vocab,
                                              args.quick, bandwidth, args.profile,
                                              args.profile_batches, args.profile_prompt_len)
        del state
    if args.grpc:
        loaded = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        switch = {"off": (False,), "on": (True,), "both": (False, True)}[args.grpc_metrics]
        cores = args.grpc_engine_core
        runs = bench_through_grpc(work, build, device, dtype, vocab, args.quick,
                                  loads_for(args.quick), _ttft_idle_s, switch,
                                  args.scrape_interval_s, args.grpc_rounds, cores,
                                  args.attention_backend, keep_logs_as=args.json)
        report["kiln_grpc"] = runs[cores[0], switch[0]]
        if len(cores) > 1:
            report["kiln_grpc_by_engine_core"] = {core: runs[core, switch[0]] for core in cores}
            report["engine_core_vs_in_process"] = engine_core_ratios(report)
        if args.grpc_metrics == "both":
            report["kiln_grpc_metrics_on"] = runs[cores[0], True]
            report["metrics_overhead"] = metrics_overhead(runs[cores[0], False],
                                                          runs[cores[0], True])
    shutil.rmtree(work, ignore_errors=True)
    if device == "cuda":
        # what the GEMV tuners chose in this process, quantized kinds included ("kind" names
        # the weights, config.kind the kernel path), so a table's figure can be traced to them
        from runtime_service.model import kernel_tuning
        report["tuned_configs"] = kernel_tuning.export_tuning(torch.device("cuda"))
    text = table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
