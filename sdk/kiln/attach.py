"""Attaching an LLM to its runtime: an empty runtime is given the engine with LoadEngine and the
LLM's runtime options; a runtime that already serves must serve this engine, with the options the
LLM asks for.
"""

from __future__ import annotations

from kiln.client import RuntimeClient
from kiln.errors import FailedPrecondition
from kiln.runtime_config import CapacitySchedulerPolicy, KvCacheConfig, StreamingLLMParam
from kiln.v1 import runtime_pb2


def runtime_options(kv_cache_config: KvCacheConfig | None,
                    capacity_scheduling_policy: CapacitySchedulerPolicy,
                    streaming_llm: bool | StreamingLLMParam,
                    enable_chunked_context: bool) -> runtime_pb2.RuntimeOptions:
    options = runtime_pb2.RuntimeOptions(scheduler_policy=capacity_scheduling_policy.value)
    kv = kv_cache_config
    if kv is not None:
        options.kv_max_tokens = kv.max_tokens or 0
        options.kv_free_gpu_memory_fraction = kv.free_gpu_memory_fraction or 0.0
        options.max_new_tokens = kv.max_new_tokens or 0
        options.max_attention_window = kv.max_attention_window or 0
        options.sink_token_length = kv.sink_token_length or 0
        options.enable_block_reuse = kv.enable_block_reuse
    if streaming_llm:
        param = streaming_llm if isinstance(streaming_llm, StreamingLLMParam) \
            else StreamingLLMParam()
        options.max_attention_window = param.max_attention_window_size
        options.sink_token_length = param.sink_token_length
        options.streaming_llm = True
    if not enable_chunked_context:
        options.enable_chunked_context = False
    return options


def attach_runtime(runtime: RuntimeClient, info: runtime_pb2.ServerInfo, uri: str,
                   engine_key: str | None,
                   options: runtime_pb2.RuntimeOptions) -> runtime_pb2.ModelInfo:
    """The ModelInfo of the runtime once it serves `uri` with `options`; the runtime must report
    the engine key that was asked for, also right after it loaded (the engine it verified)."""
    if info.state == runtime_pb2.SERVER_STATE_EMPTY:
        model_info = runtime.load_engine(uri, options)
        served = model_info.engine
        if served.uri != uri or (engine_key and served.engine_key != engine_key):
            raise FailedPrecondition(
                f"the runtime was asked to load {uri} ({(engine_key or '?')[:12]}) but reports "
                f"{served.uri} ({served.engine_key[:12]}); refusing to use it")
        return model_info
    model_info = runtime.model_info()
    if engine_key and model_info.engine.engine_key != engine_key:
        raise FailedPrecondition(
            f"the runtime already serves engine {model_info.engine.engine_key[:12]}, not "
            f"{engine_key[:12]}; point KILN_RUNTIME at a pod started for this model")
    if options != runtime_pb2.RuntimeOptions(scheduler_policy=options.scheduler_policy) or \
            options.scheduler_policy != info.scheduler_policy:
        raise FailedPrecondition(
            "the runtime already serves its engine; kv_cache_config, "
            "capacity_scheduling_policy and streaming_llm are set when a pod starts")
    return model_info


def attach_replicas(runtime: RuntimeClient, uri: str, engine_key: str,
                    options: runtime_pb2.RuntimeOptions) -> None:
    """Every replica a stream may resume on serves the primary's engine (an empty one is given
    it), so a resumed request continues on the same weights."""
    for replica in runtime.replicas:
        attach_runtime(replica, replica.server_info(), uri, engine_key, options)
