"""`kiln-launch`: run an HLAPI script or the runtime under MPI, Slurm or LeaderWorkerSet, as
`trtllm-hlapi-launch` does.

A script runs once, on rank 0: Kiln's runtime starts its own TP x PP ranks, so the other ranks
the launcher created have nothing to run and exit cleanly. Rank 0 gets the job's size in
KILN_LAUNCH_WORLD_SIZE so a script can size parallel_config from it. The runtime server itself
(`python -m runtime_service serve`) runs on every rank: rank 0 serves, the others host their
shards and join rank 0's process group (MASTER_ADDR / MASTER_PORT).

    srun --mpi=pmix kiln-launch python3 app.py
    mpirun -n 4 kiln-launch python3 app.py
    kiln-launch python -m runtime_service serve --engine s3://...   (every LWS pod)
"""

from __future__ import annotations

import os
import sys

RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "RANK")
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "WORLD_SIZE")


def _first_int(names, env) -> int | None:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def runs_on_every_rank(argv: list[str]) -> bool:
    """The runtime server hosts a rank wherever it runs; anything else is a rank-0 script."""
    return any(argv[i:i + 3] == ["-m", "runtime_service", "serve"] for i in range(len(argv)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv else 2
    rank = _first_int(RANK_VARIABLES, os.environ) or 0
    size = _first_int(SIZE_VARIABLES, os.environ) or 1
    if rank != 0 and not runs_on_every_rank(argv):
        print(f"kiln-launch: rank {rank} of {size}: the script runs on rank 0; the runtime starts "
              f"its own ranks", file=sys.stderr)
        return 0
    os.environ["KILN_LAUNCH_WORLD_SIZE"] = str(size)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"kiln-launch: cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
