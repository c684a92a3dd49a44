"""The embedded default: a builder and a runtime as local processes, over a store under $KILN_HOME.

With no endpoints configured, the SDK runs the same two services it would reach in production,
as child processes, so every call goes through the same gRPC path. The runtime starts empty and
is given its engine by LoadEngine, so it must be this session's alone: each service listens on a
unix socket in a private folder (mode 0700, so other local users cannot even connect) and
requires a per-session bearer token (so no other process of the same user that does not hold
the token can call LoadEngine or Generate first). Nothing listens on TCP. The runtime reports
readiness through a file. Processes are stopped on shutdown, and at interpreter exit if the
caller forgot. Logs go to $KILN_HOME/logs/.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
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


class PrivateDir:
    """A folder only this user can enter, holding a service's socket and its session token.
    Under the system temp folder, so the socket path stays within the 107 bytes unix allows."""

    def __init__(self, name: str):
        self.path = Path(tempfile.mkdtemp(prefix=f"kiln-{name}-"))      # mode 0700
        self.token = secrets.token_urlsafe(32)
        self.token_file = self.path / "token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.token)
        self.socket = self.path / f"{name}.sock"

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ServiceProcess:
    """One child service; `address` is where it listens once `wait_listening` returned, and
    `token` the bearer token it requires (None when it requires none)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, address: str | None = None,
                 port_file: Path | None = None, private: PrivateDir | None = None):
        self.name = name
        self.log_path = log_path
        self.port_file = port_file
        self.address = address
        self.private = private
        self.token = private.token if private is not None else None
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
                    if self.address is None:
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
        if self.private is not None:
            self.private.remove()
        atexit.unregister(self.stop)


def _connects(address: str) -> bool:
    try:
        if address.startswith("unix:"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.2)
                sock.connect(address[len("unix:"):])
                return True
        host, _, port = address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def default_device() -> str:
    """KILN_DEVICE, else cuda when an NVIDIA driver is present (checked without torch)."""
    return os.environ.get("KILN_DEVICE") or ("cuda" if Path("/dev/nvidiactl").exists() else "cpu")


def start_runtime(home: Path, device: str = "cpu", extra: list[str] | None = None) -> ServiceProcess:
    """This session's runtime: empty, LoadEngine allowed, reachable only through a private
    socket with the session token."""
    private = PrivateDir("runtime")
    argv = [sys.executable, "-m", "runtime_service", "serve", "--listen", private.address,
            "--port-file", str(private.path / "ready"), "--token-file", str(private.token_file),
            "--allow-load-engine", "--device", device, "--cache-dir", str(home / "cache"),
            *(extra or [])]
    return ServiceProcess("runtime", argv, home / "logs" / f"{private.path.name}.log",
                          address=private.address, port_file=private.path / "ready",
                          private=private)


def start_builder(home: Path, allowed_roots: list[str]) -> ServiceProcess:
    """This session's builder, behind a private socket and the session token like the runtime."""
    private = PrivateDir("builder")
    argv = [sys.executable, "-m", "builder_service", "serve", "--listen", private.address,
            "--token-file", str(private.token_file),
            "--store", str(home / "store"), "--work-dir", str(home / "work")]
    for root in allowed_roots:
        argv += ["--allowed-root", root]
    return ServiceProcess("builder", argv, home / "logs" / f"{private.path.name}.log",
                          address=private.address, private=private)
