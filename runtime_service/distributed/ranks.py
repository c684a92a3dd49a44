"""The ranks of a tp x pp engine: where they come from, their process group, what they exchange.

Rank 0 holds the gRPC server, the scheduler and the sampler; every rank holds its shard and its
KV cache. Ranks start one of two ways:

- one node, nothing launched them: `serve` spawns world_size - 1 local `worker` processes and
  they meet on 127.0.0.1 at a free port;
- a launcher started one process per node or per rank (LeaderWorkerSet, torchrun, Slurm, MPI):
  RANK / WORLD_SIZE / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT say where this process fits.
  Each such process is global rank RANK * LOCAL_WORLD_SIZE and spawns its node's other
  LOCAL_WORLD_SIZE - 1 ranks itself; under MPI without MASTER_ADDR, rank 0 hands its address
  out through mpi4py.

Control messages (the load plan, each step's inputs, stop) go from rank 0 over gloo, even on
CUDA; hidden states and logits between pipeline stages go over the default backend (nccl on
CUDA) with send/recv, and the tensor-parallel collectives run in the parallel layers.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from runtime_service.model.parallel import ParallelContext
from runtime_service.format.engine_config import Mapping
from runtime_service.errors import KilnError, Unavailable
from runtime_service.model.model_runner import StepInputs
from runtime_service.distributed.rank_layout import RankLayout

log = logging.getLogger("kiln.ranks")

# Bounds joining, waiting for the slowest rank's load, and every collective (env
# KILN_RANK_TIMEOUT_S overrides it); an idle step loop sends KEEPALIVE well within it so waiting
# ranks never time out between requests.
GROUP_TIMEOUT_S = 1800.0
KEEPALIVE_INTERVAL_S = 30.0


@dataclass(frozen=True)
class LoadPlan:
    """What rank 0 tells the others to load once they have joined."""

    uri: str                # the engine as rank 0 was given it (fetched by ranks on other nodes)
    folder: str             # rank 0's verified local copy (used where the path is visible)
    mapping: Mapping
    dtype: str | None
    gpu_memory_fraction: float
    block_size: int
    attention_backend: str


@dataclass(frozen=True)
class LoadStatus:
    rank: int
    error: str = ""
    max_kv_tokens: int = 0


STOP = "stop"
KEEPALIVE = "keepalive"


class RankLost(Unavailable):
    """A rank process is gone: the group cannot run another step."""

_MESSAGE_TYPES = {cls.__name__: cls for cls in (LoadPlan, LoadStatus, StepInputs)}


def encode_message(message) -> bytes:
    """JSON, never pickle: a rank decodes only these dataclasses, strings and integers."""
    if dataclasses.is_dataclass(message):
        fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
        if isinstance(message, LoadPlan):
            fields["mapping"] = {"tp_size": message.mapping.tp_size,
                                 "pp_size": message.mapping.pp_size}
        body = {"type": type(message).__name__, "fields": fields}
    elif isinstance(message, (str, int)) or message is None:
        body = {"type": "value", "value": message}
    else:
        raise TypeError(f"cannot send a {type(message).__name__} between ranks")
    return json.dumps(body, separators=(",", ":")).encode()


def decode_message(data: bytes):
    body = json.loads(data.decode())
    if body["type"] == "value":
        return body["value"]
    cls = _MESSAGE_TYPES.get(body["type"])
    if cls is None:
        raise KilnError(f"unknown rank message type {body['type']!r}")
    fields = body["fields"]
    if cls is LoadPlan:
        fields["mapping"] = Mapping(**fields["mapping"])
    return cls(**fields)


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """A spawned rank ends when the process that spawned it is gone, so no rank outlives a
    killed server. (A thread, not PR_SET_PDEATHSIG: that fires when the spawning *thread*
    ends, and a preexec_fn is unsafe in a threaded gRPC process.)"""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        log.error("the process that started this rank (pid %d) is gone; exiting", parent_pid)
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # rank 0 drains first, then stops us
    threading.Thread(target=watch, name="kiln-parent-watch", daemon=True).start()


def spawn_local_ranks(layout: RankLayout, device: str, cache_dir: Path,
                      log_level: str = "INFO") -> list[subprocess.Popen]:
    """Starts this node's other ranks as `python -m runtime_service worker` processes."""
    procs = []
    for local in range(1, layout.ranks_per_node):
        argv = [sys.executable, "-m", "runtime_service", "worker",
                "--rank", str(layout.rank + local), "--world-size", str(layout.world_size),
                "--local-rank", str(local), "--master-addr", layout.master_addr,
                "--master-port", str(layout.master_port), "--device", device,
                "--cache-dir", str(cache_dir), "--log-level", log_level,
                "--parent-pid", str(os.getpid())]
        procs.append(subprocess.Popen(argv))
    return procs


class RankGroup:
    """This process's membership in the engine's process group."""

    def __init__(self, rank: int, world_size: int, local_rank: int, master_addr: str,
                 master_port: int, device: str, children: list[subprocess.Popen] = ()):
        self.rank = rank
        self.world_size = world_size
        self.children = list(children)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        backend = "cpu:gloo,cuda:nccl" if self.device.type == "cuda" else "gloo"
        log.info("rank %d of %d joining %s:%d (%s)", rank, world_size, master_addr, master_port,
                 backend)
        timeout_s = float(os.environ.get("KILN_RANK_TIMEOUT_S", GROUP_TIMEOUT_S))
        self.keepalive_interval_s = min(KEEPALIVE_INTERVAL_S, timeout_s / 4)
        dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}",
                                rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        # control messages always travel over gloo on the CPU, also beside nccl on CUDA
        self._control = dist.new_group(backend="gloo") if self.device.type == "cuda" else None
        self.parallel = ParallelContext()
        self.mapping = Mapping()
        self.max_kv_blocks: int | None = None     # the least any other rank can hold
        self._closed = False
        self.stop_telling = False           # True once the other ranks left on their own
        self.failed = False                 # a step failed: ranks may be gone or stuck
        self._last_broadcast_s = time.monotonic()

    # ---- control messages, always from rank 0 ----

    def broadcast(self, message=None):
        """Rank 0 sends `message`; every rank returns it."""
        data = encode_message(message) if self.rank == 0 else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self._control)
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == 0
                  else torch.empty(int(size), dtype=torch.uint8))
        dist.broadcast(buffer, src=0, group=self._control)
        self._last_broadcast_s = time.monotonic()
        return message if self.rank == 0 else decode_message(buffer.numpy().tobytes())

    def keep_alive(self) -> None:
        """Rank 0, idle: raises RankLost when a rank it spawned has exited, and tells the
        waiting ranks it is still there before their wait times out."""
        if self._closed:
            return
        self.check_children()
        if time.monotonic() - self._last_broadcast_s > self.keepalive_interval_s:
            self.broadcast(KEEPALIVE)

    def check_children(self) -> None:
        for proc in self.children:
            code = proc.poll()
            if code is not None:
                raise RankLost(f"rank process {proc.pid} exited with code {code}")

    def gather_status(self, status: LoadStatus) -> list[LoadStatus]:
        data = encode_message(status)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=self._control)
        longest = int(max(sizes))
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buffers = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world_size)]
        dist.all_gather(buffers, mine, group=self._control)
        return [decode_message(buffer[:int(size)].numpy().tobytes())
                for buffer, size in zip(buffers, sizes)]

    def setup_parallel(self, mapping: Mapping) -> ParallelContext:
        """Creates each pipeline stage's tensor-parallel group (every rank creates all)."""
        self.mapping = mapping
        tp_group = dist.group.WORLD
        if mapping.pp_size > 1 and mapping.tp_size > 1:
            for stage in range(mapping.pp_size):
                ranks = list(range(stage * mapping.tp_size, (stage + 1) * mapping.tp_size))
                group = dist.new_group(ranks)
                if stage == mapping.pp_rank(self.rank):
                    tp_group = group
        self.parallel = ParallelContext(
            tp_rank=mapping.tp_rank(self.rank), tp_size=mapping.tp_size,
            pp_rank=mapping.pp_rank(self.rank), pp_size=mapping.pp_size, tp_group=tp_group)
        return self.parallel

    def agree_num_kv_blocks(self, num_blocks: int) -> int:
        """Rank 0's block count, cut to what every rank holds; the others allocate as many."""
        if self.max_kv_blocks is not None:
            num_blocks = min(num_blocks, self.max_kv_blocks)
        return self.broadcast(max(1, num_blocks))

    # ---- pipeline stages ----

    def send_to_next_stage(self, hidden: torch.Tensor) -> None:
        dist.send(hidden.contiguous(), dst=self.rank + self.mapping.tp_size)

    def receive_from_previous_stage(self, shape, dtype) -> torch.Tensor:
        hidden = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(hidden, src=self.rank - self.mapping.tp_size)
        return hidden

    @property
    def logits_rank(self) -> int:
        """The rank that sends the sampled rows' logits to rank 0 (last stage, tp rank 0)."""
        return (self.mapping.pp_size - 1) * self.mapping.tp_size

    # ---- the end ----

    def close(self, timeout_s: float = 30.0) -> None:
        """Rank 0: tells the other ranks to stop, leaves the group and reaps spawned ranks."""
        if self._closed:
            return
        self._closed = True
        if self.failed:
            # Rank 0 exits next; a rank blocked in a collective with a dead one may never
            # return, so it is killed rather than told (ranks on other nodes exit when their
            # collectives with this process fail).
            for proc in self.children:
                proc.kill()
                proc.wait(5)
            return
        if self.rank == 0 and not self.stop_telling:
            try:
                self.broadcast(STOP)
            except Exception:  # noqa: BLE001 - a rank that died already cannot hear it
                log.warning("could not tell every rank to stop")
        self.leave()
        for proc in self.children:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
