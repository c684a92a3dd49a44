"""Where a process sits among an engine's ranks, from whatever its launcher set."""

from __future__ import annotations

from runtime_service.distributed.rank_layout import RankLayout

LWS = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "leader", "MASTER_PORT": "29500"}


def test_nothing_set_is_one_unlaunched_node():
    layout = RankLayout.from_env({})
    assert not layout.launched and layout.rank == 0 and layout.world_size == 1


def test_a_single_process_job_is_not_launched():
    assert not RankLayout.from_env({"RANK": "0", "WORLD_SIZE": "1"}).launched


def test_lws_worker_pod_hosts_its_node_of_ranks():
    layout = RankLayout.from_env({**LWS, "RANK": "1"})
    assert layout.launched and layout.node_rank == 1
    assert (layout.rank, layout.world_size, layout.ranks_per_node) == (8, 16, 8)
    assert (layout.master_addr, layout.master_port, layout.local_rank) == ("leader", 29500, 0)


def test_one_process_per_rank_takes_its_launchers_local_rank():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "MASTER_ADDR": "node0", "MASTER_PORT": "1234"}
    layout = RankLayout.from_env(env)
    assert (layout.rank, layout.world_size, layout.local_rank) == (5, 8, 1)


def test_open_mpi_variables_are_read():
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
           "OMPI_COMM_WORLD_LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1"}
    layout = RankLayout.from_env(env)
    assert (layout.rank, layout.world_size, layout.local_rank, layout.master_port) == \
        (3, 4, 3, 29500)


def test_rank_messages_round_trip_as_json_and_refuse_other_types():
    import pytest as _pytest

    from runtime_service.format.engine_config import Mapping
    from runtime_service.model.model_runner import StepInputs
    from runtime_service.distributed.ranks import (STOP, LoadPlan, LoadStatus, decode_message,
                                       encode_message)

    plan = LoadPlan(uri="s3://b/e", folder="/tmp/e", mapping=Mapping(2, 2), dtype=None,
                    gpu_memory_fraction=0.9, block_size=16, attention_backend="auto")
    step = StepInputs(token_ids=[1, 2], positions=[0, 1], block_tables=[[3, 4]],
                      block_copies=[[1, 2]], block_rotations=[[[5, 6], 16]])
    for message in (plan, LoadStatus(rank=3, error="", max_kv_tokens=64), step, STOP, 7):
        assert decode_message(encode_message(message)) == message
    assert b"pickle" not in encode_message(plan)
    with _pytest.raises(TypeError):
        encode_message(object())
    with _pytest.raises(Exception, match="unknown rank message"):
        decode_message(b'{"type": "os.system", "fields": {}}')
