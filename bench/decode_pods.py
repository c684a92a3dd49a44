"""bench_decode's runtime pods: the same loads through an engine the builder built and a pod
serves over gRPC (bench/grpc_load.py drives them), per engine core and /metrics setting, the
medians over rounds, and the ratios bench_decode reports (pod / in-process, metrics on / off).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import torch

from decode_common import TTFT_PROMPTS, log, prompts
from runtime_service.format.engine_config import BuildConfig

def bench_through_grpc(work: Path, build: BuildConfig, device: str, dtype: torch.dtype,
                       vocab: int, quick: bool, loads: tuple, ttft_idle_s: float,
                       metrics: tuple[bool, ...] = (False,),
                       scrape_interval_s: float = 1.0, rounds: int = 1,
                       engine_cores: tuple[str, ...] = ("thread",),
                       attention_backend: str = "auto",
                       keep_logs_as: Path | None = None) -> dict[tuple, dict]:
    """`loads` ((concurrency, input, output), ...) through an engine built by the builder and
    served by a runtime pod (TTFT after `ttft_idle_s` idle as well as back to back), once
    per engine core (the pod's --engine-core: thread or process), entry of `metrics` (the pod's
    /metrics off or on, scraped every `scrape_interval_s` while on) and round; keyed by
    (engine core, metrics switch). With several rounds the pods alternate (off, on, off, on,
    ...), so drift over the run (clocks, memory, the order of the pods) falls on both sides
    alike; each figure is the median over the setting's pods, and `pods` keeps each one. With
    `keep_logs_as` (a path), each pod's log is copied beside it as STEM_pod{N}.log."""
    from grpc_load import RuntimePod, build_engine, measure
    uri = build_engine(work / "hf", work / "store", build, device, str(dtype).split(".")[1])
    pods: dict[tuple, list[dict]] = {}
    for round_index in range(rounds):
        for core in engine_cores:
            for on in metrics:
                log(f"Kiln gRPC pod, engine core {core}, metrics {'on' if on else 'off'} "
                    f"(round {round_index + 1})")
                pod = RuntimePod(uri, work, device, max_new_tokens=build.max_seq_len,
                                 metrics=on, engine_core=core,
                                 attention_backend=attention_backend)
                scraper = None
                result: dict = {"engine_core": core}
                try:
                    address = pod.wait()
                    result["startup"] = pod.startup()
                    scraper = pod.scraper(scrape_interval_s) if on else None
                    result |= measure(address,
                                      lambda n, length, seed: prompts(n, length, vocab, seed),
                                      TTFT_PROMPTS, loads, quick, log, ttft_idle_s,
                                      pod_log=pod.log_path)
                finally:
                    if scraper is not None:
                        result["metrics"] = scraper.stop()
                    pod.stop()
                    if keep_logs_as is not None:
                        keep_logs_as.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(pod.log_path, keep_logs_as.with_name(
                            f"{keep_logs_as.stem}_pod{sum(map(len, pods.values())) + 1}.log"))
                pods.setdefault((core, on), []).append(result)
                # Each pod's figures go to the log as they come, so a run cut short by the
                # device's time limit still leaves them.
                log("pod result " + json.dumps(result, default=str))
    return {key: median_of_pods(results) for key, results in pods.items()}


def median_of_pods(results: list[dict]) -> dict:
    """One pod's figures, or the median of several pods' (each pod's own figures kept)."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    return {
        "tpot_ms_batch1": statistics.median(r["tpot_ms_batch1"] for r in results),
        **{key: {k: statistics.median(r[key][k] for r in results) for k in first[key]
                 if all(k in r[key] for r in results)}
           for key in ("ttft_ms", "ttft_idle_ms", "server_ttft_ms", "server_ttft_idle_ms")
           if all(key in r for r in results)},
        "throughput": {name: {"output_tokens_per_s": statistics.median(
            r["throughput"][name]["output_tokens_per_s"] for r in results)}
            for name in first["throughput"]},
        "pods": results}


def parse_engine_cores(text: str) -> tuple[str, ...]:
    cores = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not cores or any(core not in ("thread", "process") for core in cores):
        raise argparse.ArgumentTypeError(f"expected thread, process or both (comma-separated), "
                                         f"got {text!r}")
    return cores


def engine_core_ratios(report: dict) -> dict:
    """Per engine core and load: the pod's throughput as a fraction of in-process Kiln's."""
    kiln = report.get("kiln", {}).get("throughput", {})
    return {core: {name: figures["output_tokens_per_s"] / kiln[name]["output_tokens_per_s"]
                   for name, figures in run["throughput"].items() if name in kiln}
            for core, run in report.get("kiln_grpc_by_engine_core", {}).items()}


def metrics_overhead(off: dict, on: dict) -> dict:
    """Throughput lost with metrics on, in percent of the metrics-off figure (per load), and
    the batch-1 time per token added."""
    overhead = {name: 100.0 * (1 - on["throughput"][name]["output_tokens_per_s"] /
                               figures["output_tokens_per_s"])
                for name, figures in off["throughput"].items()}
    return {"throughput_loss_pct": overhead,
            "tpot_ms_batch1_added": on["tpot_ms_batch1"] - off["tpot_ms_batch1"]}
