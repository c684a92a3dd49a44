"""Where this process sits among an engine's ranks, from what its launcher set (no torch here).

torchrun / LeaderWorkerSet set RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
Open MPI, MPICH/PMI and Slurm set their own rank and size variables. A process nobody launched
is one node of its own.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                        "SLURM_LOCALID")


def _first_int(names, env) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


@dataclass(frozen=True)
class RankLayout:
    """Where this process sits: node `node_rank` of `num_nodes`, each running `ranks_per_node`
    ranks (this process is the node's first, global rank node_rank * ranks_per_node)."""

    node_rank: int = 0
    num_nodes: int = 1
    ranks_per_node: int = 1
    local_rank: int = 0            # this process's GPU on its node
    master_addr: str = ""
    master_port: int = 0

    @property
    def launched(self) -> bool:
        """Started by an outside launcher into a job of several processes."""
        return self.num_nodes > 1

    @property
    def rank(self) -> int:
        return self.node_rank * self.ranks_per_node

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.ranks_per_node

    @classmethod
    def from_env(cls, env=None) -> "RankLayout":
        env = os.environ if env is None else env
        num_nodes = _first_int(SIZE_VARIABLES, env) or 1
        if num_nodes == 1:
            return cls()
        per_node = _first_int(("LOCAL_WORLD_SIZE",), env) or 1
        node_rank = _first_int(RANK_VARIABLES, env) or 0
        # One process per node spawns its node's ranks from GPU 0; one process per rank
        # (srun, mpirun) takes the GPU its launcher names.
        local_rank = (_first_int(LOCAL_RANK_VARIABLES, env) or 0) if per_node == 1 else 0
        addr, port = env.get("MASTER_ADDR", ""), _first_int(("MASTER_PORT",), env) or 0
        if not addr:
            addr, port = _address_through_mpi(node_rank)
        return cls(node_rank, num_nodes, per_node, local_rank, addr, port or 29500)


@functools.lru_cache(maxsize=1)
def launch_layout() -> RankLayout:
    """This process's layout, read once: under MPI it costs a broadcast every rank must join."""
    return RankLayout.from_env()


def _address_through_mpi(node_rank: int) -> tuple[str, int]:
    """Under mpiexec / srun without MASTER_ADDR: rank 0 picks its host and a free port and
    broadcasts them to the others."""
    try:
        from mpi4py import MPI
    except ImportError:
        return "127.0.0.1", 0
    chosen = (socket.gethostname(), free_port("")) if node_rank == 0 else None
    return MPI.COMM_WORLD.bcast(chosen, root=0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
