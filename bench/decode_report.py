"""bench_decode's closing table: Kiln beside HF and the pods per metric, the bandwidth floor,
the quantized engines against bf16, and the ratios of the pod runs.
"""

from __future__ import annotations

from bench_common import aligned_rows
from decode_common import TTFT_PROMPTS

def table(report: dict) -> str:
    kiln, hf = report.get("kiln", {}), report.get("hf", {})
    by_core = report.get("kiln_grpc_by_engine_core") or {"": report.get("kiln_grpc", {})}
    rows = [("metric", "kiln", "hf", "hf/kiln",
             *(f"kiln gRPC {core}".rstrip() for core in by_core))]

    def cell(value):
        return f"{value:.2f}" if value is not None else "-"

    def add(name, pick, lower_better=True):
        k, h = pick(kiln), pick(hf)
        ratio = (h / k if lower_better else k / h) if (k and h) else None
        rows.append((name, cell(k), cell(h), f"{ratio:.1f}x" if ratio else "-",
                     *(cell(pick(run)) for run in by_core.values())))

    add("batch-1 ms/token", lambda r: r.get("tpot_ms_batch1"))
    for length in TTFT_PROMPTS:
        add(f"TTFT {length} ms", lambda r, key=str(length): r.get("ttft_ms", {}).get(key))
        add(f"TTFT {length} ms, idle GPU", lambda r, key=str(length): r.get(
            "ttft_idle_ms", {}).get(key))
        if any(run.get("server_ttft_ms") for run in by_core.values()):
            add(f"TTFT {length} ms, as the pod saw it", lambda r, key=str(length): r.get(
                "server_ttft_ms", {}).get(key))
    for name in kiln.get("throughput", hf.get("throughput", {})):
        add(f"{name} tok/s", lambda r, key=name: r.get("throughput", {}).get(key, {}).get(
            "output_tokens_per_s"), False)
    lines = [f"== {report['model']} on {report['device_name']} =="]
    lines += aligned_rows(rows)
    floor = report.get("bandwidth_floor_ms")
    if floor:
        lines.append(f"bandwidth floor {floor:.2f} ms/token ({report['weight_bytes'] / 1e9:.2f} GB "
                     f"at {report['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s); kiln batch-1 "
                     f"at {floor / kiln['tpot_ms_batch1'] * 100:.0f}% of the floor"
                     if kiln.get("tpot_ms_batch1") else "")
    for name, figures in report.get("kiln_ablations", {}).items():
        load, throughput = next(iter(figures["throughput"].items()))
        lines.append(f"kiln with {name}: batch-1 {figures['tpot_ms_batch1']:.2f} ms/token, "
                     f"{load} {throughput['output_tokens_per_s']:.0f} tok/s")
    bf16_read = report.get("weight_bytes_read_per_token")
    if report.get("quantized") and bf16_read:
        floor = (f", floor {report['bandwidth_floor_read_ms']:.2f} ms"
                 if "bandwidth_floor_read_ms" in report else "")
        lines.append(f"engines ({bf16_read / 1e6:,.1f} MB read per token by bf16{floor}):")
    for name, figures in report.get("quantized", {}).items():
        floor = figures.get("bandwidth_floor_ms")
        tpot = figures["tpot_ms_batch1"]
        bf16_loads = kiln.get("throughput", {})
        loads = ", ".join(
            f"{load} {f['output_tokens_per_s']:.0f} tok/s" + (
                f" ({f['output_tokens_per_s'] / bf16_loads[load]['output_tokens_per_s']:.2f}x"
                " bf16)" if load in bf16_loads else "")
            for load, f in figures["throughput"].items())
        lines.append(f"kiln {name}: batch-1 {tpot:.2f} ms/token"
                     + (f" (floor {floor:.2f} ms, {floor / tpot * 100:.0f}%)" if floor else "")
                     + f", {figures['weight_bytes_read_per_token'] / 1e6:,.1f} MB read per "
                     f"token; {loads}")
    overhead = report.get("metrics_overhead")
    if overhead:
        lines.append("gRPC pod with /metrics on vs off: " + ", ".join(
            f"{name} {loss:+.2f}% tok/s lost" for name, loss in
            overhead["throughput_loss_pct"].items()) +
            f"; batch-1 {overhead['tpot_ms_batch1_added']:+.3f} ms/token")
    for core, ratios in report.get("engine_core_vs_in_process", {}).items():
        lines.append(f"gRPC pod with the {core} engine core / in-process: " + ", ".join(
            f"{name} {ratio:.2f}" for name, ratio in ratios.items()))
    if "greedy_vs_reference" in report:
        lines.append(f"greedy tokens identical to the reference backend: "
                     f"{report['greedy_vs_reference']}")
    return "\n".join(lines)
