"""The HLAPI's additional LLM options, each checked once: what Kiln does with it, what it refuses
(the option would change results and is not built) and what only warns (it picks a TensorRT
layout and changes nothing here). All run before any service starts."""

from __future__ import annotations

import warnings

from kiln._checks import boolean, one_of
from kiln.build_config import NoEffectWarning, PluginConfig
from kiln.errors import InvalidArgument
from kiln.model_config import ParallelConfig
from kiln.runtime_config import ContextChunkingPolicy, StreamingLLMParam

EMBEDDING_PARALLEL_MODES = ("NONE", "SHARDING_ALONG_VOCAB", "SHARDING_ALONG_HIDDEN")


def streaming_llm_param(value, plugin_config: PluginConfig) -> StreamingLLMParam | bool:
    """StreamingLLM from the argument or PluginConfig.streamingllm; True takes the defaults."""
    if not isinstance(value, (bool, StreamingLLMParam)):
        raise InvalidArgument("streaming_llm must be a bool or a StreamingLLMParam")
    if value is False and plugin_config.streamingllm:
        value = True
    return StreamingLLMParam() if value is True else value


def check_normalize_log_probs(value) -> bool:
    if boolean("normalize_log_probs", value) is False:
        raise InvalidArgument("normalize_log_probs=False is not available: Kiln returns "
                              "normalized log-probabilities only")
    return True


def check_context_chunking(value) -> ContextChunkingPolicy | None:
    policy = one_of(ContextChunkingPolicy, optional=True)("context_chunking_policy", value)
    if policy is ContextChunkingPolicy.EQUAL_PROGRESS:
        raise InvalidArgument("context_chunking_policy EQUAL_PROGRESS is not available: "
                              "Kiln chunks prompts first come, first served")
    return policy


def check_embedding_options(embedding_parallel_mode: str, share_embedding_table) -> None:
    if embedding_parallel_mode not in EMBEDDING_PARALLEL_MODES:
        raise InvalidArgument(f"embedding_parallel_mode must be one of "
                              f"{', '.join(EMBEDDING_PARALLEL_MODES)}, got "
                              f"{embedding_parallel_mode!r}")
    noops = [name for name, changed in (
        ("embedding_parallel_mode", embedding_parallel_mode != "SHARDING_ALONG_VOCAB"),
        ("share_embedding_table", boolean("share_embedding_table", share_embedding_table)))
        if changed]
    for name in noops:
        warnings.warn(f"LLM({name}=...) picks TensorRT's embedding layout and has no effect "
                      f"in Kiln (which shards along the vocabulary and ties the table when the "
                      f"checkpoint does)", NoEffectWarning, stacklevel=3)


def check_devices(parallel: ParallelConfig) -> None:
    if parallel.devices != list(range(parallel.world_size)):
        raise InvalidArgument(
            f"parallel_config.devices={parallel.devices}: the runtime places rank r on local "
            f"GPU r; choose the GPUs with CUDA_VISIBLE_DEVICES where it runs")
