"""Cold start of a runtime pod: process start to health SERVING, with the pod's own phase breakdown.

A random-weight engine of the chosen shape is built once by the real builder CLI. Then
`python -m runtime_service serve --engine URI` starts three times, each timed from Popen until
grpc.health.v1 says SERVING (polled every 50 ms); the pod's `startup ...` log line gives the
phases (imports, pull, verify, load, graph_capture, tuning, warm_up):

  store       a fresh cache directory; the engine comes from the store: `--store s3` serves it
              with `rclone serve s3` on loopback (pulled, sha256 checked as bytes arrive);
              `--store local` is a local folder store (verified in place, nothing copied).
              The first pod of this engine anywhere: it compiles every kernel and tunes
  warm        the same cache directory again: nothing to pull or compile, tuning from the cache
  second_pod  a fresh cache directory, as on another node: pulled again, compiled kernels and
              tuning from the copies the first pod left beside the engine in the store
              (--share-startup-cache); the first pod's cache directory is deleted first, as
              another node would not have it

Each pod keeps Triton's compiled kernels in its cache directory (serve points TRITON_CACHE_DIR
there), so the pods never see this machine's own kernel cache: TRITON_CACHE_DIR is not passed on.

The warm and second_pod starts must not tune, and on CUDA the second pod must take the first's
compiled kernels from the store: the benchmark exits 1 otherwise (off CUDA nothing tunes).
`--starts store,second_pod` skips the warm start. `--warm-startup-cache` has the build warm the
store first (the chart's `builds[].warmStartupCache`): then the store start must not tune either. Issue 14's targets on one H200, Llama-3-8B
shape bf16: warm <= 20 s, store <= 30 s.

  python bench/bench_cold_start.py --model llama3-8b --device cuda --store local --json F
  python bench/bench_cold_start.py --model tiny --device cpu --store s3        # CPU, loopback S3

The engine carries a synthetic 128,000-token BPE tokenizer (bench_common.save_synthetic_tokenizer),
as a real one carries Llama-3's: the pod and its engine core each load it during the start.
`--no-tokenizer` builds without one, as runs before 2026-12-04 (fourth session) did.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPO, device_name, git_commit, save_synthetic_tokenizer
from decode_common import SHAPES

from runtime_service.server.startup_report import StartupReport

STARTS = ("store", "warm", "second_pod")
TOKENIZER_VOCAB = 128_000           # Llama-3's tokenizer size (the model's vocabulary if smaller)


def make_random_hf(folder: Path, shape: dict, dtype: str, device: str) -> Path:
    """An HF folder of random weights, drawn on `device` (fast on a GPU) and saved as one
    safetensors file; made once per folder."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, initializer_range=0.02, torch_dtype=dtype)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="100GB")
    return folder


def build_engine(hf: Path, store: Path, device: str, dtype: str, args,
                 warm: bool = False) -> dict:
    """The builder CLI's engine reference; with `warm`, the build also warms the store's
    start-up cache on this GPU (`--warm-startup-cache`, as the chart's build Job can)."""
    done = subprocess.run(
        [sys.executable, "-m", "builder_service", "build", "--model", str(hf), "--store",
         str(store), "--dtype", dtype, "--target-device", device,
         "--max-batch-size", str(args.max_batch_size), "--max-input-len", str(args.max_input_len),
         "--max-seq-len", str(args.max_seq_len), "--max-num-tokens", str(args.max_num_tokens),
         *(["--warm-startup-cache"] if warm else [])],
        capture_output=True, text=True, cwd=REPO, env=pod_env({}))
    if done.returncode != 0:
        raise RuntimeError(f"engine build failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_s3(work: Path, engine_folder: Path, key: str) -> tuple[subprocess.Popen, dict, str]:
    """rclone serve s3 on loopback holding the engine; (process, env for the pod, engine URI)."""
    from bench_store import start_rclone

    from runtime_service.store import open_store

    proc, settings = start_rclone(work / "s3")
    store = open_store("s3://bench/kiln", settings)
    store.publish_engine(engine_folder)
    env = {"KILN_S3_ENDPOINT": settings.endpoint, "KILN_S3_ACCESS_KEY": settings.access_key,
           "KILN_S3_SECRET_KEY": settings.secret_key}
    return proc, env, store.engine_uri(key)


def pod_env(extra: dict) -> dict:
    """This process's environment for a pod, without a kernel cache shared between pods."""
    env = {**os.environ, **extra}
    env.pop("TRITON_CACHE_DIR", None)
    return env


def timed_start(uri: str, cache_dir: Path, log_path: Path, device: str, env: dict,
                timeout_s: float) -> dict:
    """Seconds from Popen to SERVING and the pod's startup fields; stops the pod after."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port_file = log_path.with_suffix(".port")
    port_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime_service", "serve", "--engine", uri,
             "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--device", device,
             "--cache-dir", str(cache_dir), "--share-startup-cache"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=pod_env(env))
        try:
            serving_s = None
            channel = None
            while time.perf_counter() - started < timeout_s:
                if process.poll() is not None:
                    raise RuntimeError(f"the pod exited with {process.returncode}; see {log_path}")
                if channel is None and port_file.is_file() and port_file.read_text().strip():
                    channel = grpc.insecure_channel(f"127.0.0.1:{port_file.read_text().strip()}")
                if channel is not None:
                    try:
                        status = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=2).status
                    except grpc.RpcError:
                        status = None
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        serving_s = time.perf_counter() - started
                        break
                time.sleep(0.05)
            if channel is not None:
                channel.close()
            if serving_s is None:
                raise RuntimeError(f"not SERVING within {timeout_s:.0f} s; see {log_path}")
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    text = log_path.read_text()
    lines = [line for line in text.splitlines() if " startup total_s=" in line]
    if not lines:
        raise RuntimeError(f"the pod logged no startup line; see {log_path}")
    # after the core's phases: the pod's wait for its own tokenizer (0 when it was ready)
    waited = re.findall(r"the pod waited ([0-9.]+) s for its tokenizer", text)
    # kernels a compile worker filed under another cache key, so the pod compiled them again
    twice = re.findall(r"([0-9]+) compiled again here under another cache key", text)
    return {"process_to_serving_s": round(serving_s, 3), **StartupReport.parse_log_line(lines[-1]),
            "pod_tokenizer_wait_s": float(waited[-1]) if waited else 0.0,
            "kernels_compiled_twice": int(twice[-1]) if twice else 0}


def table(starts: dict) -> str:
    keys = ["process_to_serving_s", "total_s", "imports_s", "pull_s", "verify_s", "load_s",
            "graph_capture_s", "tuning_s", "warm_up_s", "pod_tokenizer_wait_s", "tuned_shapes",
            "tuning_source",
            "kernel_files_from_store", "kernels_compiled", "kernels_compiled_twice",
            "launchers_built", "compile_workers"]
    rows = [f"| start | {' | '.join(k.removesuffix('_s') for k in keys)} |",
            "| --- |" + " --- |" * len(keys)]
    for name, fields in starts.items():
        rows.append(f"| {name} | " + " | ".join(str(fields.get(k, "")) for k in keys) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--store", choices=("s3", "local"), default="s3",
                        help="s3: rclone serve s3 on loopback (needs the rclone binary); "
                        "local: a local folder store")
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-input-len", type=int, default=4096)
    parser.add_argument("--max-seq-len", type=int, default=4096 + 256)
    parser.add_argument("--max-num-tokens", type=int, default=8192)
    parser.add_argument("--work-dir", type=Path,
                        help="keep the model and engine here between runs (default: a temp dir)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per start")
    parser.add_argument("--starts", default=",".join(STARTS),
                        help="which starts to time, in order (store comes first when given)")
    parser.add_argument("--warm-startup-cache", action="store_true",
                        help="the build warms the store's start-up cache first (kiln build "
                        "--warm-startup-cache), so the store start is the first serving pod "
                        "after such a build")
    parser.add_argument("--no-tokenizer", action="store_true",
                        help="build the engine without a tokenizer (runs before 2026-12-04's "
                        "fourth session did); by default it carries a 128,000-token one, as a "
                        "real Llama-3 engine does, since loading it is part of a pod's start")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    chosen = tuple(name for name in STARTS if name in args.starts.split(","))
    if not chosen or set(args.starts.split(",")) - set(STARTS):
        parser.error(f"--starts takes some of {','.join(STARTS)}")
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.model == "tiny":
        args.max_batch_size, args.max_input_len = min(args.max_batch_size, 16), 256
        args.max_seq_len, args.max_num_tokens = 512, 512
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="kiln-cold-start-"))
    work.mkdir(parents=True, exist_ok=True)
    rclone = None
    try:
        made = time.perf_counter()
        hf = make_random_hf(work / f"hf-{args.model}-{dtype}", SHAPES[args.model], dtype,
                            args.device)
        if args.no_tokenizer:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                (hf / name).unlink(missing_ok=True)
        elif not (hf / "tokenizer.json").is_file():
            save_synthetic_tokenizer(hf, min(TOKENIZER_VOCAB, SHAPES[args.model]["vocab_size"]))
        engine = build_engine(hf, work / "store", args.device, dtype, args)
        print(f"engine {engine['engine_key'][:12]} ready in {time.perf_counter() - made:.1f} s",
              file=sys.stderr)
        folder = work / "store" / "engines" / engine["engine_key"]
        env, uri = {}, str(folder)
        if args.store == "s3":
            shutil.rmtree(work / "s3", ignore_errors=True)
            rclone, env, uri = start_s3(work, folder, engine["engine_key"])
        for stale in ("cache-1", "cache-2"):
            shutil.rmtree(work / stale, ignore_errors=True)
        shutil.rmtree(folder / "startup", ignore_errors=True)
        warmed_s = None
        if args.warm_startup_cache:
            began = time.perf_counter()
            build_engine(hf, work / "store", args.device, dtype, args, warm=True)
            warmed_s = round(time.perf_counter() - began, 1)
            print(f"the build warmed the store's start-up cache in {warmed_s} s", file=sys.stderr)
        caches = {"store": work / "cache-1", "warm": work / "cache-1",
                  "second_pod": work / "cache-2"}
        starts = {}
        for name in chosen:
            if name == "second_pod":
                # Another node has no first-node folder: Triton's group files name its paths,
                # and while they resolve a second pod hid a fresh node's recompile (run 18).
                shutil.rmtree(caches["store"], ignore_errors=True)
            starts[name] = timed_start(uri, caches[name], work / f"pod-{name}.log", args.device,
                                       env, args.timeout_s)
            print(f"{name}: SERVING after {starts[name]['process_to_serving_s']:.2f} s "
                  f"({starts[name]})", file=sys.stderr)
    finally:
        if rclone is not None:
            rclone.terminate()
            rclone.wait(10)
    # The first pod of the engine is the warming build when there was one, else the store
    # start. Every start after it finds its tuning; each on a fresh folder takes its compiled
    # kernels from the store (on CUDA), and none compiles anything: every kernel is at hand.
    first_pod_ran = bool(warmed_s) or "store" in starts
    later = [name for name in STARTS if name in starts and (warmed_s or name != "store")]
    later = later if first_pod_ran else []
    retuned = [name for name in later if starts[name]["tuned_shapes"]]
    unshared = [name for name in later if name != "warm" and args.device == "cuda"
                and not starts[name].get("kernel_files_from_store")]
    recompiled = [name for name in later if starts[name].get("kernels_compiled")]
    twice = [name for name in starts if starts[name]["kernels_compiled_twice"]]
    report = {"bench": "cold_start", "model": args.model, "device": args.device,
              "device_name": device_name(args.device), "dtype": dtype,
              "store": "rclone serve s3 on 127.0.0.1" if args.store == "s3" else "local folder",
              "engine_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
              "commit": git_commit(), "machine": platform.node(), "cpu_count": os.cpu_count(),
              "build_warmed_startup_cache_s": warmed_s,
              "starts": starts, "retuned": retuned, "kernels_unshared": unshared,
              "recompiled": recompiled, "compiled_twice": twice}
    print(table(starts))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    if retuned:
        print(f"FAIL: these starts tuned again: {retuned}", file=sys.stderr)
    if unshared:
        print(f"FAIL: these starts took no compiled kernels from the store: {unshared}",
              file=sys.stderr)
    if recompiled:
        print(f"FAIL: these starts compiled kernels they should have found: {recompiled} "
              "(their pod logs name them)", file=sys.stderr)
    if twice:
        print(f"FAIL: these starts compiled kernels their workers had compiled: {twice} (the "
              "workers filed them under other cache keys; kernels/jit_keys.py)", file=sys.stderr)
    return 1 if retuned or unshared or recompiled or twice else 0


if __name__ == "__main__":
    sys.exit(main())
