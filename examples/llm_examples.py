"""The HLAPI examples on Kiln: each task is one example of the surface, runnable alone.

    python3 llm_examples.py --task run_llm_from_huggingface_model --hf_model_dir <dir>
    python3 llm_examples.py --task run_llm_on_tensor_parallel --prompt="<prompt>" --hf_model_dir=<dir>

Without a GPU everything runs on the CPU. A setting Kiln cannot serve (an algorithm it does not
build, an int4 group size the model's widths do not divide) is refused with a clear error,
which a task reports and does not hide.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile

from kiln import LLM, ModelConfig
from kiln.errors import FailedPrecondition
from kiln.hlapi import CapacitySchedulerPolicy, KvCacheConfig, SamplingConfig
from kiln.hlapi.utils import get_device_count
from kiln.quantization import QuantAlgo

PROMPTS = ["To tell a story", "The capital of France is"]


def _sampling(llm: LLM, max_new_tokens: int) -> SamplingConfig:
    config = llm.get_default_sampling_config()
    config.max_new_tokens = max_new_tokens
    return config


def run_llm_from_huggingface_model(model_dir: str, prompt: str, max_new_tokens: int, **_):
    config = ModelConfig(model_dir=model_dir)
    with LLM(config) as llm:
        for output in llm.generate([prompt] if prompt else PROMPTS,
                                   sampling_config=_sampling(llm, max_new_tokens)):
            print(output)


def run_llm_from_tllm_engine(model_dir: str, prompt: str, max_new_tokens: int, engine_dir=None,
                             **_):
    """Build once and save the engine, then load the saved engine without a rebuild."""
    engine_dir = engine_dir or tempfile.mkdtemp(prefix="kiln-engine-") + "/engine"
    with LLM(ModelConfig(model_dir=model_dir)) as llm:
        llm.save(engine_dir)
    print(f"saved the engine to {engine_dir}")
    with LLM(ModelConfig(model_dir=engine_dir)) as llm:
        for output in llm.generate([prompt or PROMPTS[0]],
                                   sampling_config=_sampling(llm, max_new_tokens)):
            print(output)


def run_llm_generate_async_example(model_dir: str, prompt: str, max_new_tokens: int, **_):
    with LLM(ModelConfig(model_dir=model_dir), async_mode=True) as llm:
        async def main():
            async for output in llm.generate_async(prompt or PROMPTS[1], streaming=True,
                                                   sampling_config=_sampling(llm, max_new_tokens)):
                print(output)
        asyncio.run(main())


def run_llm_with_async_future(model_dir: str, prompt: str, max_new_tokens: int, **_):
    with LLM(ModelConfig(model_dir=model_dir),
             kv_cache_config=KvCacheConfig(free_gpu_memory_fraction=0.4)) as llm:
        sampling = _sampling(llm, max_new_tokens)
        # the HLAPI's pattern: iterate the future, block on .result() inside the loop
        for output in llm.generate_async(prompt or PROMPTS[0], sampling):
            print(output.result(timeout=600))

        async def awaited():
            return await llm.generate_async(prompt or PROMPTS[1], sampling_config=sampling).aresult()
        print(asyncio.run(awaited()))


def run_llm_with_token_ids(model_dir: str, max_new_tokens: int, **_):
    with LLM(ModelConfig(model_dir=model_dir)) as llm:
        for output in llm.generate([[32, 12]], sampling_config=_sampling(llm, max_new_tokens)):
            print(output)


def run_llm_with_runtime_customization(model_dir: str, prompt: str, max_new_tokens: int, **_):
    with LLM(ModelConfig(model_dir=model_dir),
             kv_cache_config=KvCacheConfig(max_new_tokens=128, free_gpu_memory_fraction=0.8),
             capacity_scheduling_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT) as llm:
        for output in llm.generate([prompt or PROMPTS[0]],
                                   sampling_config=_sampling(llm, max_new_tokens)):
            print(output)


def run_llm_with_beam_search(model_dir: str, prompt: str, max_new_tokens: int, **_):
    with LLM(ModelConfig(model_dir=model_dir, max_beam_width=4)) as llm:
        sampling_config = _sampling(llm, max_new_tokens)
        sampling_config.beam_width = 4
        for output in llm.generate([prompt or PROMPTS[1]], sampling_config=sampling_config):
            print(output)


def run_llm_on_tensor_parallel(model_dir: str, prompt: str, max_new_tokens: int, tp_size=2, **_):
    config = ModelConfig(model_dir=model_dir)
    config.parallel_config.tp_size = tp_size
    with LLM(config) as llm:
        for output in llm.generate([prompt or PROMPTS[0]],
                                   sampling_config=_sampling(llm, max_new_tokens)):
            print(output)


def run_llm_with_auto_parallel(model_dir: str, prompt: str, max_new_tokens: int,
                               world_size=2, **_):
    config = ModelConfig(model_dir=model_dir)
    config.parallel_config.auto_parallel = True
    config.parallel_config.world_size = world_size
    print(f"{get_device_count()} GPUs here")
    with LLM(config) as llm:
        for output in llm.generate([prompt or PROMPTS[0]], _sampling(llm, max_new_tokens)):
            print(output)


def run_llm_with_quantization(model_dir: str, prompt: str, max_new_tokens: int,
                              quant_type="int4_awq", group_size=128, **_):
    config = ModelConfig(model_dir=model_dir)
    config.quant_config.quant_algo = {"int4_awq": QuantAlgo.W4A16_AWQ, "int8": QuantAlgo.W8A16,
                                      "fp8": QuantAlgo.FP8}[quant_type]
    config.quant_config.group_size = group_size
    with LLM(config) as llm:
        for output in llm.generate([prompt or PROMPTS[0]],
                                   sampling_config=_sampling(llm, max_new_tokens)):
            print(output)


TASKS = {f.__name__: f for f in (
    run_llm_from_huggingface_model, run_llm_from_tllm_engine, run_llm_generate_async_example,
    run_llm_with_async_future, run_llm_with_token_ids, run_llm_with_runtime_customization,
    run_llm_with_beam_search, run_llm_on_tensor_parallel, run_llm_with_auto_parallel,
    run_llm_with_quantization)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--hf_model_dir", "--model_dir", dest="model_dir", required=True)
    parser.add_argument("--engine_dir")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--tp_size", type=int, default=2)
    parser.add_argument("--quant_type", default="int4_awq", choices=("int4_awq", "int8", "fp8"))
    parser.add_argument("--group_size", type=int, default=128, help="int4 group: 128, 64 or 32")
    args = parser.parse_args(argv)
    print(f"== {args.task}", flush=True)
    try:
        TASKS[args.task](**vars(args))
    except FailedPrecondition as exc:
        print(f"refused by Kiln: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
