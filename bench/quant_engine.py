"""Quantized engines for bench_decode.py --quant: the bf16 engine's random weights quantized in
memory with the builder's own transform (builder_service.quantizer), and the bytes a decode step
reads per token, which set each engine's bandwidth floor.

W4A16_AWQ here is round-to-nearest int4 in AWQ's storage format (grouped scales and zero
points): the activation-aware search only changes the values of the scales, not the bytes or
the kernels, so its speed is that of RTN. No calibration runs (random weights make it
meaningless and it would take minutes of the GPU session).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from builder_service.quantizer import quantizing
from runtime_service.format.engine_config import EngineConfig, QuantConfig
from runtime_service.model.layers.quantized_linear import WeightQuant, pack_for_device
from runtime_service.model.llama import LlamaModel
from runtime_service.model.loader import LoadedModel

WEIGHT_ALGOS = ("NONE", "W4A16_AWQ", "W4A16", "W8A16", "FP8")
KV_QUANTS = {"NONE": "auto", "INT8": "int8", "FP8": "fp8"}
AWQ_NOTE = ("W4A16_AWQ weights are round-to-nearest int4 in AWQ's format (no calibration "
            "search on random weights): same bytes and kernels as a calibrated AWQ engine")


@dataclass(frozen=True)
class QuantVariant:
    """One quantized engine of the run: weight algorithm, int4 group size, KV cache dtype."""

    algo: str
    group_size: int = 128
    kv_cache_dtype: str = "auto"

    def __post_init__(self):
        QuantConfig(algo=self.algo, group_size=self.group_size,
                    kv_cache_dtype=self.kv_cache_dtype)        # validates every field

    @property
    def name(self) -> str:
        weights = "bf16" if self.algo == "NONE" else self.algo
        if self.algo in ("W4A16", "W4A16_AWQ"):
            weights += f" g{self.group_size}"
        kv = "" if self.kv_cache_dtype == "auto" else f" + KV {self.kv_cache_dtype.upper()}"
        return weights + kv


def variants_for(algos: str, group_size: int, kv_quant: str) -> list[QuantVariant]:
    """'W4A16_AWQ,FP8' and a KV setting -> the engines to measure beside the bf16 one."""
    kv = KV_QUANTS[kv_quant]
    names = [a.strip().upper() for a in algos.split(",") if a.strip()] if algos else []
    if not names and kv != "auto":
        names = ["NONE"]                    # bf16 weights, quantized KV cache
    unknown = [n for n in names if n not in WEIGHT_ALGOS]
    if unknown:
        raise ValueError(f"--quant takes {', '.join(WEIGHT_ALGOS[1:])}, got {unknown}")
    return [QuantVariant(n, group_size, kv) for n in names]


def float_state(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """The engine's unquantized weights on the host (so the bf16 engine's device memory can go
    before a quantized one is made, and each engine gets the same KV cache budget)."""
    return {name: p.detach().to("cpu") for name, p in loaded.model.named_parameters()}


def quantized_model(state: dict[str, torch.Tensor], config: EngineConfig, dtype: torch.dtype,
                    device: str, variant: QuantVariant) -> LoadedModel:
    """A LoadedModel whose decoder linears hold `variant`'s quantization of `state`, made with
    the transform the builder writes engines with, each tensor quantized on `device`."""
    quant = QuantConfig(algo=variant.algo, group_size=variant.group_size,
                        kv_cache_dtype=variant.kv_cache_dtype)
    weight_quant = WeightQuant.for_algo(quant.algo, quant.group_size)
    args = config.model
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaModel(args, range(args.num_layers), quant=weight_quant)
    finally:
        torch.set_default_dtype(previous)
    transform = quantizing(quant, dtype)
    params = dict(model.named_parameters())
    for name, full in state.items():
        pieces = transform(name, full.to(device)) if transform else [(name, full.to(device))]
        for piece_name, tensor in pieces:
            keep = getattr(params[piece_name], "keeps_dtype", False)
            owner, _, leaf = piece_name.rpartition(".")
            param = torch.nn.Parameter(tensor if keep else tensor.to(dtype), requires_grad=False)
            param.keeps_dtype = keep
            setattr(model.get_submodule(owner) if owner else model, leaf, param)
    model.tie_weights_if_needed()
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            setattr(module, name, buffer.to(device=device, dtype=dtype if
                                             buffer.is_floating_point() else buffer.dtype))
    if weight_quant is not None:
        for module in model.modules():
            if getattr(module, "quant", None) is not None:
                pack_for_device(module, weight_quant)
    model.kv_cache_dtype = variant.kv_cache_dtype
    model.eval()
    return LoadedModel(model, EngineConfig(model=args, quant=quant, build=config.build), "hf",
                       None, dtype)


def bytes_read_per_token(model: torch.nn.Module) -> int:
    """Weight bytes one decode step reads for one token: every parameter (codes, scales, zero
    points, norms, the head) except the embedding table, of which it reads a single row."""
    embed = getattr(model, "embed_tokens", None)
    head = getattr(model, "lm_head", None)
    if embed is None or (head is not None and head.weight is embed.weight):
        embed = None                         # no table, or a tied one that the head reads whole
    skip = {id(embed.weight)} if embed is not None else set()
    total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)
    if embed is not None:
        total += embed.weight.shape[1] * embed.weight.element_size()
    return total
