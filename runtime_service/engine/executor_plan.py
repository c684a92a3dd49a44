"""What an executor's options come to for one engine on one device, decided once at start.

ExecutorOptions say what the operator asked for, mostly "None: take it from the build"; the
engine's build limits and the device decide the rest. Kept apart from the step loop
(executor.py) so that every size the executor runs with is computed in one place, from its
inputs alone, and read here rather than among the loop's state.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime_service.engine.executor_options import DEFAULT_PREFILL_GRAPH_TOKENS, ExecutorOptions
from runtime_service.engine.kv_cache import AttentionWindow
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.engine.scheduler import SchedulerConfig
from runtime_service.errors import InvalidRequest
from runtime_service.format.engine_config import BuildConfig, EngineConfig


@dataclass(frozen=True)
class ExecutorPlan:
    """`window`: the sliding attention window (None: whole sequences). `graph_batch`: decode
    steps of up to this many sequences replay CUDA graphs (0: none). `prefill_graph_tokens`: a
    one-prompt prefill of up to this many tokens replays a graph. `overlap`: steps may overlap,
    where the runner supports it. `warm_up`: the start runs the largest step once."""

    window: AttentionWindow | None
    scheduler: SchedulerConfig
    graph_batch: int
    prefill_graph_tokens: int
    overlap: bool
    warm_up: bool


def plan_executor(config: EngineConfig, build: BuildConfig, options: ExecutorOptions,
                  device_type: str) -> ExecutorPlan:
    """The plan for `options` over an engine of `config` built with `build` on a device of
    `device_type` ("cuda", "cpu"); InvalidRequest for settings that do not combine."""
    window = None
    if options.max_attention_window is not None:
        if config.model.rope_scaling.rope_type == "dynamic" and options.streaming_llm:
            raise InvalidRequest("StreamingLLM does not combine with dynamic NTK rotary")
        window = AttentionWindow(options.sink_token_length, options.max_attention_window,
                                 rotate_in_cache=options.streaming_llm)
    scheduler = SchedulerConfig(
        max_batch_size=min(options.max_batch_size or build.max_batch_size, build.max_batch_size),
        max_num_tokens=min(options.max_num_tokens or build.max_num_tokens, build.max_num_tokens),
        policy=options.policy,
        enable_chunked_prefill=options.enable_chunked_prefill,
    )
    on_cuda = device_type == "cuda"
    graph_batch = options.cuda_graph_max_batch_size
    if graph_batch is None:
        graph_batch = scheduler.max_batch_size if on_cuda else 0
    if window is not None:
        graph_batch = 0            # captured decode graphs assume absolute cache positions
    prefill_tokens = options.cuda_graph_max_prefill_tokens
    if prefill_tokens is None:
        prefill_tokens = DEFAULT_PREFILL_GRAPH_TOKENS
    overlap = on_cuda if options.overlap_scheduling is None else options.overlap_scheduling
    warm_up = on_cuda if options.warm_up_largest_step is None else options.warm_up_largest_step
    return ExecutorPlan(window=window, scheduler=scheduler, graph_batch=graph_batch,
                        prefill_graph_tokens=min(prefill_tokens, scheduler.max_num_tokens),
                        overlap=overlap and window is None, warm_up=warm_up)


def num_kv_blocks(build: BuildConfig, options: ExecutorOptions, tokens_by_memory: int) -> int:
    """KV blocks for the build's batch at its longest sequences, or what memory holds, or
    `options.kv_max_tokens` within memory; at least one."""
    tokens = min(build.max_batch_size * build.max_seq_len, tokens_by_memory)
    if options.kv_max_tokens is not None:
        tokens = min(options.kv_max_tokens, tokens_by_memory)
    return max(1, tokens // options.block_size)


def largest_step_requests(scheduler: SchedulerConfig, max_input_len: int, max_seq_len: int,
                          vocab_size: int, kv_tokens: int, block_size: int) -> list[Request]:
    """One step's worth of prompt tokens (max_num_tokens, or what the KV cache holds, less a
    block a request), split over as few requests as the input limit allows, each asking for one
    token. Their token ids count up without repeating while the step is smaller than the
    vocabulary, so a prefix cache has nothing to share and the step computes them all."""
    per_request = max(1, min(max_input_len, max_seq_len - 1, scheduler.max_num_tokens))
    count = min(-(-scheduler.max_num_tokens // per_request), scheduler.max_batch_size)
    room = kv_tokens - count * block_size
    total = max(count, min(scheduler.max_num_tokens, room))
    requests = []
    for index in range(count):
        length = max(1, min(per_request, total - index * per_request))
        first = index * per_request
        ids = [(first + j) % (vocab_size - 1) + 1 for j in range(length)]
        requests.append(Request(f"kiln-warm-up-{index}", ids,
                                SamplingParams(max_new_tokens=1, end_id=-1)))
    return requests
