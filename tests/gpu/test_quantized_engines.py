"""Quantized layers and an INT8 / FP8 KV cache on CUDA compute what their CPU path computes
(the CUDA branch runs kernels/quant_linear.py and the attention kernels' k_scale / v_scale)."""

from __future__ import annotations

import pytest
import torch

from gpu.tiers import sweep
from runtime_service.model.layers.linear import ColumnParallelLinear
from runtime_service.model.layers.quantized_linear import (WeightQuant, dequantized_weight,
                                                           pack_for_device, quantize_weight)
from support.engine_logits import local_builder

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kind, tolerance", [("int4", 2e-2), ("int8", 2e-2), ("fp8", 6e-2)])
# 1 and 64 rows take the decode GEMV's two ends; 7 and 300 (the GEMM) are in the long tier.
@pytest.mark.parametrize("rows", sweep([1, 7, 64, 300], core=(1, 64)))
def test_quantized_layer_on_cuda_matches_its_cpu_path(kind, tolerance, rows):
    torch.manual_seed(rows)
    quant = WeightQuant(kind, 128)
    layer = ColumnParallelLinear(4096, (1024, 512), bias=True, quant=quant)
    for name, tensor in quantize_weight(torch.randn(1536, 4096) * 0.02, quant,
                                        torch.bfloat16).items():
        getattr(layer, name).data = tensor
    layer.bias.data = torch.randn(1536).bfloat16()
    x = torch.randn(rows, 4096).bfloat16()
    want = layer(x).float()
    weight = dequantized_weight(layer, quant, torch.float32)
    layer.cuda()
    pack_for_device(layer, quant)                  # as the loader does: the kernels' layout
    assert layer.packed_for_kernels
    assert torch.equal(dequantized_weight(layer, quant, torch.float32).cpu(), weight)
    got = layer(x.cuda()).float().cpu()
    scale = want.abs().amax()
    assert ((got - want).abs() <= tolerance * scale).all(), (got - want).abs().max()


# The FP8 KV kernels have their own default-tier tests (test_kv_quant_kernels.py).
@pytest.mark.parametrize("kind", sweep(["int8", "fp8"], core=("int8",)))
def test_quantized_kv_engine_on_cuda_matches_the_cpu_engine(kind, tmp_path):
    from builder_service.settings import BuildSpec
    from runtime_service.engine.executor import Executor, ExecutorOptions
    from runtime_service.engine.request import Request, SamplingParams
    from runtime_service.format.engine_config import QuantConfig
    from support.random_llama import make_random_llama
    hf = make_random_llama(tmp_path / "hf", num_hidden_layers=2)
    builder = local_builder(tmp_path)
    # layer 0 and the down projections stay float: one graph mixes both kinds of linear
    key = builder.build(BuildSpec(source=str(hf), dtype="float32", quant=QuantConfig(
        algo="W8A16", kv_cache_dtype=kind,
        exclude_modules=("model.layers.0.*", "*.mlp.down_proj")))).engine.engine_key
    folder = tmp_path / "store" / "engines" / key
    prompt = [5, 17, 99, 3, 250, 8, 9]
    logprobs = {}
    for device in ("cpu", "cuda"):
        executor = Executor.from_folder(folder, ExecutorOptions(
            device=device, dtype="float32", load_tokenizer=False, kv_max_tokens=1024)).start()
        try:
            out = list(executor.submit(Request("r", prompt, SamplingParams(
                max_new_tokens=4, ignore_eos=True, prompt_logprobs=True))))
        finally:
            executor.shutdown()
        logprobs[device] = out[0].prompt_logprobs
    assert logprobs["cuda"] == pytest.approx(logprobs["cpu"], abs=0.05 if kind == "int8" else 0.3)
