"""`kiln.hlapi.llm`: the names tensorrt_llm.hlapi.llm exports, from where Kiln keeps them."""

from kiln.build_config import BuildConfig, PluginConfig
from kiln.executor import GenerationExecutor
from kiln.hlapi.tokenizer import TokenizerBase, TransformersTokenizer
from kiln.hlapi.utils import (GenerationOutput, GpuArch, OutputConfig, SamplingConfig,
                              file_with_glob_exists, file_with_suffix_exists, get_device_count,
                              print_colored)
from kiln.llm import LLM
from kiln.model_config import ModelConfig, ModelFormatKind, ParallelConfig
from kiln.quantization import QuantAlgo, QuantConfig
from kiln.result import GenerationResult
from kiln.runtime_config import (CapacitySchedulerPolicy, ContextChunkingPolicy, KvCacheConfig,
                                 StreamingLLMParam)

__all__ = ["LLM", "ModelConfig", "ParallelConfig", "StreamingLLMParam", "KvCacheConfig",
           "CapacitySchedulerPolicy", "ContextChunkingPolicy", "BuildConfig", "PluginConfig",
           "GenerationExecutor",
           "QuantAlgo", "QuantConfig", "SamplingConfig", "OutputConfig", "GenerationOutput",
           "GenerationResult", "TokenizerBase", "TransformersTokenizer", "GpuArch",
           "get_device_count", "print_colored", "file_with_glob_exists",
           "file_with_suffix_exists", "ModelFormatKind"]
