"""What an executor's options come to (engine/executor_plan.py): the build's limits where an
option says None, the device's defaults, and the settings a sliding window rules out."""

from __future__ import annotations

import pytest

from runtime_service.engine.executor_options import DEFAULT_PREFILL_GRAPH_TOKENS, ExecutorOptions
from runtime_service.engine.executor_plan import (largest_step_requests, num_kv_blocks,
                                                  plan_executor)
from runtime_service.errors import InvalidRequest
from runtime_service.format.engine_config import BuildConfig, EngineConfig
from runtime_service.format.model_config import ModelArgs, RopeScaling

BUILD = BuildConfig(max_batch_size=8, max_input_len=512, max_seq_len=1024, max_num_tokens=1024)


def _config(rope_type: str = "default") -> EngineConfig:
    rope = RopeScaling(rope_type=rope_type, factor=2.0) if rope_type != "default" else RopeScaling()
    return EngineConfig(ModelArgs(vocab_size=100, hidden_size=16, intermediate_size=32,
                                  num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8,
                                  rope_scaling=rope))


def test_unset_options_take_the_builds_limits_and_the_devices_defaults():
    cuda = plan_executor(_config(), BUILD, ExecutorOptions(), "cuda")
    assert (cuda.scheduler.max_batch_size, cuda.scheduler.max_num_tokens) == (8, 1024)
    assert cuda.graph_batch == 8 and cuda.overlap and cuda.warm_up and cuda.window is None
    assert cuda.prefill_graph_tokens == min(DEFAULT_PREFILL_GRAPH_TOKENS, 1024)
    cpu = plan_executor(_config(), BUILD, ExecutorOptions(), "cpu")
    assert cpu.graph_batch == 0 and not cpu.overlap and not cpu.warm_up


def test_options_are_capped_by_the_build_and_explicit_choices_win_on_any_device():
    options = ExecutorOptions(max_batch_size=100, max_num_tokens=256, overlap_scheduling=True,
                              warm_up_largest_step=True, cuda_graph_max_batch_size=4,
                              cuda_graph_max_prefill_tokens=4096)
    plan = plan_executor(_config(), BUILD, options, "cpu")
    assert (plan.scheduler.max_batch_size, plan.scheduler.max_num_tokens) == (8, 256)
    assert plan.overlap and plan.warm_up and plan.graph_batch == 4
    assert plan.prefill_graph_tokens == 256          # never more than one step holds


def test_a_sliding_window_turns_off_decode_graphs_and_overlap():
    options = ExecutorOptions(max_attention_window=64, sink_token_length=4, streaming_llm=True,
                              overlap_scheduling=True)
    plan = plan_executor(_config(), BUILD, options, "cuda")
    assert plan.window is not None and plan.window.rotate_in_cache
    assert plan.graph_batch == 0 and not plan.overlap
    with pytest.raises(InvalidRequest, match="dynamic NTK"):
        plan_executor(_config("dynamic"), BUILD, options, "cuda")


def test_kv_blocks_cover_the_build_within_memory_and_an_explicit_cap_within_memory():
    assert num_kv_blocks(BUILD, ExecutorOptions(), 10**9) == 8 * 1024 // 16
    assert num_kv_blocks(BUILD, ExecutorOptions(), 1000) == 1000 // 16
    assert num_kv_blocks(BUILD, ExecutorOptions(kv_max_tokens=64), 10**9) == 4
    assert num_kv_blocks(BUILD, ExecutorOptions(kv_max_tokens=10**6), 320) == 20
    assert num_kv_blocks(BUILD, ExecutorOptions(), 3) == 1


def test_the_warm_up_fills_one_step_within_the_cache_without_shared_prefixes():
    plan = plan_executor(_config(), BUILD, ExecutorOptions(), "cuda")
    requests = largest_step_requests(plan.scheduler, 512, 1024, 100, 10**6, 16)
    assert [len(r.prompt_token_ids) for r in requests] == [512, 512]
    ids = [i for r in requests for i in r.prompt_token_ids]
    assert all(0 < i < 100 for i in ids) and ids[:99] == list(range(1, 100))
    small = largest_step_requests(plan.scheduler, 512, 1024, 100, 300, 16)
    blocks = sum(-(-(len(r.prompt_token_ids) + 1) // 16) for r in small)  # prompt + its token
    assert len(small) == 2 and blocks * 16 <= 300
    assert all(r.sampling.max_new_tokens == 1 and r.sampling.end_id == -1 for r in small)
