"""Kiln SDK: the LLM / ModelConfig surface over gRPC. Never imports torch.

    from kiln import LLM, ModelConfig
    llm = LLM(ModelConfig(model_dir="path/to/llama"))
    for output in llm.generate(["To tell a story"]):
        print(output)
"""

__version__ = "0.1.0"

from kiln.build_config import BuildConfig
from kiln.errors import KilnError
from kiln.llm import LLM
from kiln.model_config import ModelConfig, ParallelConfig
from kiln.output import OutputConfig
from kiln.quantization import QuantAlgo, QuantConfig
from kiln.result import CompletionOutput, GenerationResult
from kiln.runtime_config import CapacitySchedulerPolicy, KvCacheConfig, StreamingLLMParam
from kiln.sampling import SamplingConfig

__all__ = ["LLM", "ModelConfig", "ParallelConfig", "BuildConfig", "QuantAlgo", "QuantConfig",
           "SamplingConfig", "OutputConfig", "KvCacheConfig", "CapacitySchedulerPolicy",
           "StreamingLLMParam", "GenerationResult", "CompletionOutput", "KilnError"]
