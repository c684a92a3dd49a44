"""Real servers on loopback for integration tests: `rclone serve s3` with an auth key, free
ports, and the environment a builder subprocess needs."""

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

from runtime_service.store import S3Settings

REPO = Path(__file__).resolve().parents[2]
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


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
