"""Where the services are: endpoints from arguments or KILN_BUILDER / KILN_RUNTIME, else the
embedded default started as local processes.

`start_services` returns what an LLM needs before building: a runtime client, the runtime's
ServerInfo and, when a build is needed, a builder client. Everything it started is recorded in the
lists it is given, so the caller can stop it all on failure or shutdown.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.client import BuilderClient, Endpoint, LoopThread, RuntimeClient
from kiln.errors import InvalidArgument
from kiln.embedded import ServiceProcess, default_device, kiln_home, start_builder, start_runtime
from kiln.v1 import runtime_pb2


@dataclass
class Services:
    home: Path
    runtime: RuntimeClient
    server_info: runtime_pb2.ServerInfo
    builder: Endpoint | None              # None: no builder needed (a saved engine, embedded)
    builder_process: ServiceProcess | None


def start_services(model_dir: str, builder: str | None, runtime: str | None,
                   home_dir: str | None, needs_builder_for_local_engine: bool,
                   loop: LoopThread, processes: list, clients: list,
                   timeout_s: float, extra_roots: tuple[Path, ...] = ()) -> Services:
    """Finds or starts the runtime (and the builder when one is needed) and waits for both. A
    builder started here may read model_dir and `extra_roots` (the calibration file) only."""
    builder = builder or os.environ.get("KILN_BUILDER") or None
    runtime = runtime_addresses(runtime or os.environ.get("KILN_RUNTIME") or None)
    home = kiln_home(home_dir)
    embedded_runtime = runtime is None
    needs_builder = needs_builder_for_local_engine or not embedded_runtime
    runtime_process = builder_process = None
    if embedded_runtime:
        runtime_process = start_runtime(home, default_device())
        processes.append(runtime_process)
    if needs_builder and builder is None:
        remote = model_dir.startswith("s3://")
        roots = [str(Path(model_dir).resolve())] if not remote else []
        roots += [str(root) for root in extra_roots]
        builder_process = start_builder(home, roots)
        processes.append(builder_process)
    if runtime_process is not None:
        runtime_endpoint = Endpoint(runtime_process.wait_listening(timeout_s),
                                    runtime_process.token)
    else:
        runtime_endpoint = Endpoint.from_env(runtime[0])
    replicas = tuple(Endpoint.from_env(address) for address in (runtime or [])[1:])
    runtime_client = RuntimeClient(runtime_endpoint, loop, replicas)
    clients.append(runtime_client)
    server_info = runtime_client.server_info()
    builder_endpoint = None
    if needs_builder and builder_process is not None:
        builder_endpoint = Endpoint(builder_process.wait_listening(timeout_s),
                                    builder_process.token)
        wait_healthy(builder_process, loop, timeout_s)
    elif needs_builder:
        builder_endpoint = Endpoint.from_env(builder)
    return Services(home, runtime_client, server_info, builder_endpoint, builder_process)


def runtime_addresses(runtime: str | list[str] | tuple | None) -> list[str] | None:
    """`runtime=` (or KILN_RUNTIME): one address, several separated by commas, or a list. The
    first takes the unary calls; a stream resumes on the others when its replica fails."""
    if runtime is None:
        return None
    items = runtime.split(",") if isinstance(runtime, str) else list(runtime)
    addresses = [item.strip() for item in items if isinstance(item, str) and item.strip()]
    if not addresses or len(addresses) != len(items):
        raise InvalidArgument(f"runtime must be 'host:port', several separated by commas, or a "
                              f"list of them; got {runtime!r}")
    return addresses


def wait_healthy(process: ServiceProcess, loop: LoopThread, timeout_s: float) -> None:
    """Polls a started builder's health until SERVING (or its process dies, or time runs out)."""
    client = BuilderClient(Endpoint(process.address, process.token), loop)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            process.check_alive()
            try:
                if client.health() == "SERVING":
                    return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
    finally:
        client.close()
