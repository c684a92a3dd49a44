"""`kiln.hlapi`: the names the HLAPI documents under `tensorrt_llm.hlapi`, with its submodules
llm, tokenizer and utils."""

from kiln.hlapi.llm import (LLM, BuildConfig, CapacitySchedulerPolicy, GenerationResult,
                            KvCacheConfig, ModelConfig, ParallelConfig, QuantConfig,
                            StreamingLLMParam)
from kiln.hlapi.tokenizer import TokenizerBase, TransformersTokenizer
from kiln.hlapi.utils import OutputConfig, SamplingConfig

__all__ = ["LLM", "ModelConfig", "ParallelConfig", "BuildConfig", "QuantConfig",
           "SamplingConfig", "OutputConfig", "KvCacheConfig", "CapacitySchedulerPolicy",
           "StreamingLLMParam", "GenerationResult", "TokenizerBase", "TransformersTokenizer"]
