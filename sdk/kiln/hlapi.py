"""`kiln.hlapi`: the names the HLAPI documents under `tensorrt_llm.hlapi`."""

from kiln import (LLM, BuildConfig, CapacitySchedulerPolicy, GenerationResult, KvCacheConfig,
                  ModelConfig, ParallelConfig, QuantConfig, SamplingConfig, StreamingLLMParam)

__all__ = ["LLM", "ModelConfig", "ParallelConfig", "BuildConfig", "QuantConfig", "SamplingConfig",
           "KvCacheConfig", "CapacitySchedulerPolicy", "StreamingLLMParam", "GenerationResult"]
