"""Real Kiln services for integration and e2e tests: tiny models, built engines, runtime pods.

Everything runs on 127.0.0.1 as child processes (the production entry points), with bounded
waits. The tiny model is a random-weight LLaMA that carries SmolLM2's real tokenizer, so text
paths (tokenize, detokenize, stop strings) are exercised at random-model speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.v1 import runtime_pb2, runtime_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
# The real Kiln home (read before any test points KILN_HOME elsewhere), so SmolLM2 is made once.
SMOLLM2_DIR = Path(os.environ.get("KILN_HOME") or Path.home() / ".cache" / "kiln") / "models" / \
    "SmolLM2-135M-Instruct"


def make_tiny_chat_llama(folder: Path, **config) -> Path:
    """A 2-layer random LLaMA (vocab 49152) saved with SmolLM2's tokenizer; made once per folder."""
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from runtime_service.sample_model import gguf_path
    from support.random_llama import make_random_llama

    fields = dict(vocab_size=49152, eos_token_id=2, bos_token_id=1, max_position_embeddings=4096)
    fields.update(config)
    make_random_llama(folder, **fields)
    source = gguf_path()
    AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name).save_pretrained(
        str(folder))
    return folder


def tiny_config(model_dir, **kwargs):
    """A kiln.ModelConfig with build limits small enough for CPU tests."""
    from kiln import ModelConfig
    config = ModelConfig(model_dir=str(model_dir), **kwargs)
    config.build_config.max_seq_len = 2048
    config.build_config.max_input_len = 256
    config.build_config.max_batch_size = 64
    return config


def build_engine(model: Path, store: Path, *extra: str, timeout_s: float = 600) -> dict:
    """Builds through `python -m builder_service build`; returns its JSON engine reference."""
    argv = [sys.executable, "-m", "builder_service", "build", "--model", str(model),
            "--store", str(store), "--dtype", "float32", "--target-device", "cpu", *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


class RuntimePod:
    """`python -m runtime_service serve` on a free loopback port."""

    def __init__(self, tmp: Path, engine: str = "", *flags: str, env: dict | None = None):
        self.port_file = tmp / f"port-{time.monotonic_ns()}"
        self.log_path = tmp / f"runtime-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-m", "runtime_service", "serve", "--listen", "127.0.0.1:0",
                "--port-file", str(self.port_file), "--cache-dir", str(tmp / "cache"), *flags]
        if engine:
            argv += ["--engine", engine]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=REPO, env={**os.environ, **(env or {})})
        self.address = ""

    def wait_listening(self, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"runtime exited {self.process.returncode}:\n{self.log()}")
            if self.port_file.is_file() and self.port_file.read_text().strip():
                self.address = f"127.0.0.1:{self.port_file.read_text().strip()}"
                return self.address
            time.sleep(0.05)
        raise AssertionError(f"runtime did not listen within {timeout_s}s:\n{self.log()}")

    def wait_serving(self, timeout_s: float = 180) -> str:
        self.wait_listening(timeout_s)
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"runtime exited:\n{self.log()}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                except grpc.RpcError:
                    status = None       # exited or not up yet: poll() above tells which
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return self.address
                time.sleep(0.1)
        raise AssertionError(f"runtime not SERVING within {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:        # stop() closes it; the file on disk is still there
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout_s: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def runtime_stub(channel) -> runtime_pb2_grpc.RuntimeStub:
    return runtime_pb2_grpc.RuntimeStub(channel)


def kv_counters(stub) -> tuple[int, int, int]:
    """(free blocks, total blocks, live requests) from GetServerInfo."""
    info = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=10)
    return info.kv_cache.num_free_blocks, info.kv_cache.num_total_blocks, info.num_live_requests


def wait_all_blocks_free(stub, timeout_s: float = 10) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        free, total, live = kv_counters(stub)
        if (free == total and live == 0) or time.monotonic() > deadline:
            return free, total, live
        time.sleep(0.02)


@contextlib.contextmanager
def embedded_kiln_home(home: Path):
    """The SDK's embedded default under `home`: KILN_HOME set, KILN_BUILDER / KILN_RUNTIME unset,
    and all three restored afterwards."""
    saved = {name: os.environ.pop(name, None) for name in ("KILN_BUILDER", "KILN_RUNTIME", "KILN_HOME")}
    os.environ["KILN_HOME"] = str(home)
    try:
        yield home
    finally:
        os.environ.pop("KILN_HOME", None)
        for name, value in saved.items():
            if value is not None:
                os.environ[name] = value
