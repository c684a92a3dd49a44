"""The embedded default: a builder and a runtime as local processes, over a store under $KILN_HOME.

With no endpoints configured, the SDK runs the same two services it would reach in production,
as child processes on loopback, so every call goes through the same gRPC path. The runtime
listens on port 0 and reports its port through a file (no port race); it starts empty and is
given its engine by LoadEngine. Processes are stopped on shutdown, and at interpreter exit if the
caller forgot. Logs go to $KILN_HOME/logs/.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kiln.errors import ServiceFailed, error_for

DEFAULT_HOME = Path.home() / ".cache" / "kiln"
ERROR_PREFIX = "kiln-runtime: error: "


def kiln_home(path: str | os.PathLike | None = None) -> Path:
    home = Path(path or os.environ.get("KILN_HOME") or DEFAULT_HOME).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """One child service; `address` is where it listens once `wait_listening` returned."""

    def __init__(self, name: str, argv: list[str], log_path: Path, address: str | None = None,
                 port_file: Path | None = None):
        self.name = name
        self.log_path = log_path
        self.port_file = port_file
        self.address = address
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)

    def log_tail(self, num_lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raises the service's own error (its `kiln-runtime: error:` line) if it has exited."""
        code = self.process.poll()
        if code is None:
            return
        for line in reversed(self.log_tail(50).splitlines()):
            if line.startswith(ERROR_PREFIX):
                status, _, message = line[len(ERROR_PREFIX):].partition(": ")
                raise error_for(status, message)
        raise ServiceFailed(f"the {self.name} exited with code {code}; its log "
                            f"({self.log_path}) ends with:\n{self.log_tail()}")

    def wait_listening(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.port_file is not None and self.port_file.is_file():
                text = self.port_file.read_text().strip()
                if text:
                    self.address = f"127.0.0.1:{text}"
                    return self.address
            elif self.port_file is None and self.address and _connects(self.address):
                return self.address
            time.sleep(0.05)
        self.stop()
        raise ServiceFailed(f"the {self.name} did not start within {timeout_s:.0f}s; log: "
                            f"{self.log_path}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if not self._log.closed:
            self._log.close()
        atexit.unregister(self.stop)


def _connects(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def default_device() -> str:
    """KILN_DEVICE, else cuda when an NVIDIA driver is present (checked without torch)."""
    return os.environ.get("KILN_DEVICE") or ("cuda" if Path("/dev/nvidiactl").exists() else "cpu")


def start_runtime(home: Path, device: str = "cpu", extra: list[str] | None = None) -> ServiceProcess:
    runs = home / "run"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="runtime-", dir=runs))
    port_file = run_dir / "port"
    argv = [sys.executable, "-m", "runtime_service", "serve", "--listen", "127.0.0.1:0",
            "--port-file", str(port_file), "--allow-load-engine", "--device", device,
            "--cache-dir", str(home / "cache"), *(extra or [])]
    return ServiceProcess("runtime", argv, home / "logs" / f"runtime-{run_dir.name}.log",
                          port_file=port_file)


def start_builder(home: Path, allowed_roots: list[str]) -> ServiceProcess:
    port = _free_port()
    argv = [sys.executable, "-m", "builder_service", "serve", "--listen", f"127.0.0.1:{port}",
            "--store", str(home / "store"), "--work-dir", str(home / "work")]
    for root in allowed_roots:
        argv += ["--allowed-root", root]
    return ServiceProcess("builder", argv, home / "logs" / f"builder-{port}.log",
                          address=f"127.0.0.1:{port}")
