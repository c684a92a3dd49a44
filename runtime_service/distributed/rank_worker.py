"""Starting a tp x pp engine's ranks: rank 0's side (`start_ranked_executor`) and the others'
(`run_rank`, behind `python -m runtime_service worker` and `serve` on a launched rank >= 1).

The handshake, the same on every rank after the process group forms:
  1. rank 0 broadcasts a LoadPlan (the engine, its mapping, device, dtype, cache settings);
  2. every rank loads its shard and all gather a LoadStatus (an error, or the KV tokens it can
     hold), so a rank that cannot load fails the start instead of hanging it;
  3. rank 0 broadcasts the KV block count; every rank allocates that many;
  4. steps, until rank 0 broadcasts STOP.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

import torch

from runtime_service.errors import FailedPrecondition
from runtime_service.distributed.rank_layout import RankLayout, free_port, launch_layout
from runtime_service.distributed.ranks import (LoadPlan, LoadStatus, RankGroup, exit_with_parent,
                                   spawn_local_ranks)

log = logging.getLogger("kiln.ranks")


def engine_world_size(folder: Path) -> int:
    from runtime_service.model.loader import config_for_folder
    return config_for_folder(folder)[1].mapping.world_size


def start_ranked_executor(folder: Path, uri: str, options, cache_dir: Path):
    """Rank 0 of an engine split over several ranks: starts or joins the others, loads shard 0
    and returns an Executor whose steps run on every rank."""
    from runtime_service.distributed.ranked_runner import RankedModelRunner
    from runtime_service.engine.executor import Executor
    from runtime_service.model.loader import config_for_folder, load_model
    mapping = config_for_folder(folder)[1].mapping
    layout = launch_layout()
    if layout.launched:
        if layout.world_size != mapping.world_size:
            raise FailedPrecondition(
                f"the engine needs {mapping.world_size} ranks (tp {mapping.tp_size} x pp "
                f"{mapping.pp_size}); the launcher started {layout.num_nodes} nodes x "
                f"{layout.ranks_per_node} ranks")
    else:
        layout = RankLayout(ranks_per_node=mapping.world_size, master_addr="127.0.0.1",
                            master_port=free_port())
    children = spawn_local_ranks(layout, options.device, cache_dir,
                                 logging.getLevelName(logging.getLogger().level))
    try:
        group = RankGroup(0, layout.world_size, layout.local_rank, layout.master_addr,
                          layout.master_port, options.device, children)
    except BaseException:
        _stop_children(children)
        raise
    try:
        group.broadcast(LoadPlan(uri=uri, folder=str(folder), mapping=mapping,
                                 dtype=options.dtype,
                                 gpu_memory_fraction=options.kv_free_gpu_memory_fraction,
                                 block_size=options.block_size,
                                 attention_backend=options.attention_backend))
        parallel = group.setup_parallel(mapping)
        loaded, status = None, LoadStatus(0)
        try:
            loaded = load_model(folder, device=group.device, dtype=options.dtype,
                                parallel=parallel, rank=0)
        except Exception as exc:  # noqa: BLE001 - told to every rank, then raised
            status = LoadStatus(0, error=f"{type(exc).__name__}: {exc}")
        statuses = group.gather_status(status)
        failed = [s for s in statuses if s.error]
        if failed:
            group.stop_telling = True       # every rank saw the failure and is leaving
            raise FailedPrecondition("; ".join(f"rank {s.rank} could not load: {s.error}"
                                               for s in failed))
        group.max_kv_blocks = min(s.max_kv_tokens for s in statuses[1:]) // options.block_size
        executor = Executor(loaded, options, ranks=group,
                            runner_class=functools.partial(RankedModelRunner, group))
    except BaseException:
        group.close()
        raise
    log.info("engine ready on %d ranks (tp %d x pp %d)", layout.world_size, mapping.tp_size,
             mapping.pp_size)
    return executor


def _stop_children(children) -> None:
    for proc in children:
        proc.terminate()
    for proc in children:
        proc.wait(10)


def run_rank(rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int,
             device: str, cache_dir: Path, children=()) -> int:
    """A rank other than 0, from joining to STOP. Returns the process's exit code."""
    from runtime_service.store import fetch_engine
    from runtime_service.model.loader import load_model
    from runtime_service.model.model_runner import kv_tokens_by_memory
    from runtime_service.distributed.ranked_runner import RankedModelRunner
    group = RankGroup(rank, world_size, local_rank, master_addr, master_port, device, children)
    try:
        plan: LoadPlan = group.broadcast()
        parallel = group.setup_parallel(plan.mapping)
        status = LoadStatus(rank)
        try:
            folder = Path(plan.folder)
            if not (folder / "config.json").is_file():
                folder, _ = fetch_engine(plan.uri, cache_dir)
            loaded = load_model(folder, device=group.device, dtype=plan.dtype,
                                parallel=parallel, rank=rank)
            status = LoadStatus(rank, max_kv_tokens=kv_tokens_by_memory(
                loaded.model, loaded.dtype, group.device, plan.gpu_memory_fraction))
        except Exception as exc:  # noqa: BLE001 - reported to rank 0, which fails the start
            log.exception("rank %d could not load its shard", rank)
            status = LoadStatus(rank, error=f"{type(exc).__name__}: {exc}")
        if any(s.error for s in group.gather_status(status)):
            return 1
        num_blocks = group.broadcast()
        if not isinstance(num_blocks, int):       # rank 0 failed after loading
            return 1
        runner = RankedModelRunner(group, loaded.model, num_blocks, plan.block_size,
                                   group.device, loaded.dtype, None,
                                   attention=plan.attention_backend)
        log.info("rank %d serving its shard (tp rank %d, pp rank %d, %d KV blocks)", rank,
                 parallel.tp_rank, parallel.pp_rank, num_blocks)
        try:
            runner.serve_steps()
        except Exception:  # noqa: BLE001 - see below
            # A rank that cannot run a step leaves at once, without the group's goodbyes that
            # would wait on the others: its closed connections are how they learn of it.
            log.exception("rank %d failed a step; exiting", rank)
            logging.shutdown()
            os._exit(1)
        return 0
    finally:
        group.leave()
        for proc in group.children:
            proc.wait()


def run_launched_node(layout: RankLayout, device: str, cache_dir: Path) -> int:
    """`serve` on a launched node other than the leader's: hosts this node's ranks."""
    children = spawn_local_ranks(layout, device, cache_dir)
    return run_rank(layout.rank, layout.world_size, layout.local_rank, layout.master_addr,
                    layout.master_port, device, cache_dir, children)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime_service worker",
                                     description="One rank of a tp x pp engine (started by "
                                     "serve; not meant to be run by hand).")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--local-rank", type=int, default=0)
    parser.add_argument("--master-addr", required=True)
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "kiln" / "engines"))
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s rank{args.rank} %(name)s %(message)s")
    torch.set_grad_enabled(False)
    if args.parent_pid:
        exit_with_parent(args.parent_pid)
    return run_rank(args.rank, args.world_size, args.local_rank, args.master_addr,
                    args.master_port, args.device, Path(args.cache_dir))
