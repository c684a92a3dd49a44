"""What the decode-family benchmarks share (bench_decode, bench_prefill, bench_gemv,
bench_attention, bench_quant_kernels, bench_cold_start): the random-weight LLaMA shapes, the HF
model and Kiln's model holding its weights, the device's copy bandwidth (the denominator of
every bandwidth floor), prompts of random ids, and a timed generate.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime_service.engine.executor import Executor  # noqa: E402
from runtime_service.engine.request import Request, SamplingParams  # noqa: E402
from runtime_service.format.engine_config import BuildConfig, EngineConfig  # noqa: E402
from runtime_service.format.model_config import ModelArgs  # noqa: E402
from runtime_service.model.hf_convert import convert_hf_tensors  # noqa: E402
from runtime_service.model.llama import LlamaModel  # noqa: E402
from runtime_service.model.loader import LoadedModel  # noqa: E402

# Llama-2's 4096 positions are raised to 4352 so that its engine (max_seq_len 4096 + 256, which
# the builder checks against the model) holds a 4096-token prompt and 256 new tokens; the rope
# and every weight shape are Llama-2's.
SHAPES = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      max_position_embeddings=4352, rope_theta=10000.0, rms_norm_eps=1e-5),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5),
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4608,
                 rope_theta=10000.0, rms_norm_eps=1e-5),
}
TTFT_PROMPTS = (128, 1024, 4096)


def log(*parts) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (count, length), generator=generator).tolist()


def fixed_length(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, min_new_tokens=n, end_id=-1)


# ---- the model, built once on the device --------------------------------------------------------

def build_hf(shape: dict, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, initializer_range=0.02)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval(), config


class _StateDictSource:
    """convert_hf_tensors reads any object with names() and get(name)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def names(self) -> set[str]:
        return set(self.state)

    def get(self, name: str) -> torch.Tensor:
        return self.state[name]


def kiln_from_hf(hf_model, hf_config, dtype: torch.dtype, device: str,
                 build: BuildConfig) -> LoadedModel:
    """Kiln's LlamaModel holding the HF model's weights (fused QKV / gate-up made on the device)."""
    args = ModelArgs.from_hf_config(hf_config.to_dict())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaModel(args, range(args.num_layers))
    finally:
        torch.set_default_dtype(previous)
    params = dict(model.named_parameters())
    source = _StateDictSource(dict(hf_model.state_dict()))
    for name, tensor in convert_hf_tensors(source, args):
        params[name].data = tensor.to(device=device, dtype=dtype)
    model.eval()
    return LoadedModel(model, EngineConfig(model=args, build=build), "hf", None, dtype)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def copy_bandwidth(device: str) -> float | None:
    """Bytes read plus written per second for a 2 GiB device-to-device copy (median of 20)."""
    if device != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * (1 << 31) / statistics.median(times[5:])


def kiln_generate_timed(executor: Executor, requests: list[Request]) -> tuple[float, list]:
    """Submits all, waits for all; (wall seconds, per-request (first-token s, last s, tokens))."""
    start = time.perf_counter()
    streams = [executor.submit(r) for r in requests]
    per_request = []
    for stream in streams:
        first = None
        tokens: list[int] = []
        for out in stream:
            now = time.perf_counter() - start
            if first is None and out.new_token_ids:
                first = now
            tokens.extend(out.new_token_ids)
        per_request.append((first, time.perf_counter() - start, tokens))
    return time.perf_counter() - start, per_request
