"""Real servers on loopback: `rclone serve s3` (with an auth key) and the builder as a process."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from support.tiny_llama import make_tiny_llama  # noqa: E402

from runtime_service.store import S3Settings  # noqa: E402

BUCKET = "kiln"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout_s}s")


def rclone_binary() -> str:
    found = Path(sys.executable).parent / "rclone"
    return str(found) if found.exists() else shutil.which("rclone")


@dataclass
class S3Server:
    settings: S3Settings
    root: Path
    process: subprocess.Popen

    @property
    def env(self) -> dict:
        return {"KILN_S3_ENDPOINT": self.settings.endpoint,
                "KILN_S3_ACCESS_KEY": self.settings.access_key,
                "KILN_S3_SECRET_KEY": self.settings.secret_key, "KILN_S3_SECURE": "0"}


def start_s3(root: Path, *extra: str) -> S3Server:
    (root / BUCKET).mkdir(parents=True, exist_ok=True)
    port = free_port()
    access, secret = f"kilnaccess{secrets.token_hex(4)}", f"kilnsecret{secrets.token_hex(8)}"
    proc = subprocess.Popen([rclone_binary(), "serve", "s3", "--auth-key", f"{access},{secret}",
                             "--addr", f"127.0.0.1:{port}", *extra, str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return S3Server(S3Settings(endpoint=f"127.0.0.1:{port}", access_key=access,
                               secret_key=secret), root, proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3root"))
    yield server
    stop(server.process)


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class BuilderServer:
    address: str
    token: str
    models: Path
    process: subprocess.Popen

    @property
    def metadata(self):
        return [("authorization", f"Bearer {self.token}")]


@pytest.fixture(scope="module")
def builder_server(tmp_path_factory, s3):
    base = tmp_path_factory.mktemp("builder")
    models = base / "models"
    models.mkdir()
    token = secrets.token_hex(16)
    (base / "token").write_text(token)
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder_service", "serve", "--listen", "127.0.0.1:0",
         "--store", f"s3://{BUCKET}/prod", "--work-dir", str(base / "work"),
         "--allowed-root", str(models), "--token-file", str(base / "token"),
         "--max-concurrent-builds", "3"],
        cwd=REPO, env=subprocess_env(**s3.env), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        stop(proc)
        raise RuntimeError(f"builder did not start: {line!r}")
    address = line.split("listening on ")[1].split()[0]
    yield BuilderServer(address, token, models, proc)
    stop(proc)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "hf")
