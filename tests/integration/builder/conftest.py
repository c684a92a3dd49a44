"""Real servers on loopback: `rclone serve s3` (with an auth key) and the builder as a process."""

from __future__ import annotations

import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from support.servers import BUCKET, REPO, start_s3, stop, subprocess_env  # noqa: E402
from support.tiny_llama import make_tiny_llama  # noqa: E402

from builder_service.progress import TEST_PAUSE_ENV  # noqa: E402


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3root"))
    yield server
    stop(server.process)


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
        # an AWQ build holds at its calibration until its caller cancels (no test here lets
        # one finish), so the cancel test never races the build
        cwd=REPO, env=subprocess_env(**s3.env, **{TEST_PAUSE_ENV: "calibrate"}),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
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
