"""HF LLaMA tensors to Kiln tensors (fused QKV and gate/up), and the split of those over ranks.

Streams one tensor group at a time, so converting a large model never holds two copies of it.
Reads safetensors only: no pickle, no torch.load.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from runtime_service.format.json_input import read_json_object
from runtime_service.format.engine_config import Mapping, QuantConfig
from runtime_service.errors import InvalidRequest
from runtime_service.model.layers.linear import shard_columns, shard_rows
from runtime_service.model.llama import layer_index, sharding_rule
from runtime_service.format.linear_names import kiln_name
from runtime_service.model.prequantized import (FLOAT_DTYPES, check_head_unquantized,
                                                 check_stored, read_linear)
from runtime_service.format.model_config import ModelArgs


class SafetensorsFolder:
    """Read access to every tensor in a folder's *.safetensors files, by name."""

    def __init__(self, folder: Path):
        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise InvalidRequest(f"no *.safetensors weights in {folder} (pickled weights are refused)")
        self._where: dict[str, Path] = {}
        for file in files:
            try:
                with safe_open(file, framework="pt") as handle:
                    for name in handle.keys():
                        self._where[name] = file
            except Exception as exc:
                raise InvalidRequest(f"corrupt safetensors file {file.name}: {exc}") from exc

    def names(self) -> set[str]:
        return set(self._where)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise InvalidRequest(f"weights are missing tensor {name!r}")
        with safe_open(self._where[name], framework="pt") as handle:
            return handle.get_tensor(name)


def check_layer_count(names: set[str], num_layers: int) -> None:
    """An HF folder whose weights hold decoder layers past config.json's num_hidden_layers is
    refused: its config and weights disagree (a config copied from a smaller model, or weights
    of a larger one), and serving the first layers alone would answer with another model."""
    beyond = sorted({index for name in names
                     if (index := layer_index(name.removeprefix("model."))) is not None
                     and index >= num_layers})
    if beyond:
        raise InvalidRequest(
            f"the weights hold decoder layer(s) {beyond[0]}"
            + (f"-{beyond[-1]}" if len(beyond) > 1 else "")
            + f" but config.json's num_hidden_layers is {num_layers}: config and weights "
            "are of different models")


def read_hf_config(folder: Path) -> dict:
    return read_json_object(Path(folder) / "config.json", f"config.json in {folder}")


def _fused(source: SafetensorsFolder, prefix: str, parts: dict[str, tuple[int, int]],
           kiln: str, quant: QuantConfig | None) -> Iterator[tuple[str, torch.Tensor]]:
    """A fused linear's weight, or (pre-quantized source) its qweight, scales and zeros: each
    is output-row-major, so fusing is a concatenation along dim 0 either way. `parts`: each
    HF linear's (out, in) features, which a pre-quantized one's stored tensors must fit."""
    if quant is None:
        yield kiln + "weight", torch.cat([_float(source, prefix + p + "weight", shape)
                                          for p, shape in parts.items()], 0)
        return
    pieces = [read_linear(source.get, source.names(), prefix + p, quant, shape)
              for p, shape in parts.items()]
    for suffix in pieces[0]:
        yield kiln + suffix, torch.cat([piece[suffix] for piece in pieces], dim=0)


def _float(source: SafetensorsFolder, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A plain tensor, which must be a float one of the shape config.json gives it: a
    checkpoint with another shape would build an engine that cannot load, or worse."""
    return check_stored(name, source.get(name), FLOAT_DTYPES, shape, against=_AGAINST)


_AGAINST = "the model's config.json"


def convert_hf_tensors(source: SafetensorsFolder, args: ModelArgs,
                       layers: range | None = None,
                       with_embedding: bool = True,
                       with_head: bool = True,
                       quant: QuantConfig | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (kiln name, full tensor) for the requested layers and ends of the model. `quant`
    names a pre-quantized checkpoint's scheme (model/prequantized.py): its linears are read as
    they are stored, never quantized again."""
    names = source.names()
    prefix = "model." if "model.embed_tokens.weight" in names else ""
    hidden, inter = args.hidden_size, args.intermediate_size
    get = lambda n, *shape: _float(source, prefix + n, shape)  # noqa: E731
    quant = quant if quant is not None and quant.algo != "NONE" else None
    unquantized = quant.unquantized_linears(args) if quant is not None else frozenset()

    def stored(layer: int, linear: str) -> QuantConfig | None:
        return None if kiln_name(layer, linear) in unquantized else quant
    if with_embedding:
        yield "embed_tokens.weight", get("embed_tokens.weight", args.vocab_size, hidden)
    for i in layers if layers is not None else range(args.num_layers):
        hf = f"layers.{i}."
        yield f"layers.{i}.input_norm.weight", get(hf + "input_layernorm.weight", hidden)
        yield f"layers.{i}.post_attn_norm.weight", get(hf + "post_attention_layernorm.weight",
                                                       hidden)
        layer = prefix + hf
        yield from _fused(source, layer, {"self_attn.q_proj.": (args.q_size, hidden),
                                          "self_attn.k_proj.": (args.kv_size, hidden),
                                          "self_attn.v_proj.": (args.kv_size, hidden)},
                          f"layers.{i}.attn.qkv_proj.", stored(i, "attn.qkv_proj"))
        yield from _fused(source, layer, {"self_attn.o_proj.": (hidden, args.q_size)},
                          f"layers.{i}.attn.o_proj.", stored(i, "attn.o_proj"))
        if args.attention_bias:
            yield f"layers.{i}.attn.qkv_proj.bias", torch.cat(
                [get(hf + f"self_attn.{p}_proj.bias", size) for p, size in
                 (("q", args.q_size), ("k", args.kv_size), ("v", args.kv_size))], dim=0)
            yield f"layers.{i}.attn.o_proj.bias", get(hf + "self_attn.o_proj.bias", hidden)
        yield from _fused(source, layer, {"mlp.gate_proj.": (inter, hidden),
                                          "mlp.up_proj.": (inter, hidden)},
                          f"layers.{i}.mlp.gate_up_proj.", stored(i, "mlp.gate_up_proj"))
        yield from _fused(source, layer, {"mlp.down_proj.": (hidden, inter)},
                          f"layers.{i}.mlp.down_proj.", stored(i, "mlp.down_proj"))
        if args.mlp_bias:
            yield f"layers.{i}.mlp.gate_up_proj.bias", torch.cat(
                [get(hf + "mlp.gate_proj.bias", inter), get(hf + "mlp.up_proj.bias", inter)],
                dim=0)
            yield f"layers.{i}.mlp.down_proj.bias", get(hf + "mlp.down_proj.bias", hidden)
    if with_head:
        yield "norm.weight", get("norm.weight", hidden)
        head_name = "lm_head.weight" if "lm_head.weight" in names \
            and not args.tie_word_embeddings else prefix + "embed_tokens.weight"
        head = source.get(head_name)                  # read once: it is the largest tensor
        if quant is not None:
            check_head_unquantized(names, head)
        yield "lm_head.weight", check_stored(head_name, head, FLOAT_DTYPES,
                                             (args.vocab_size, hidden), against=_AGAINST)


def shard_for_rank(name: str, full: torch.Tensor, args: ModelArgs, mapping: Mapping,
                   rank: int) -> torch.Tensor:
    """This rank's piece of a full tensor, by the rule its layer declares."""
    rule, sections, units = sharding_rule(name, args)
    tp_rank = mapping.tp_rank(rank)
    if rule == "column":
        return shard_columns(full, sections, tp_rank, mapping.tp_size, units)
    if rule == "row":
        return shard_rows(full, tp_rank, mapping.tp_size)
    return full


def rank_tensors(source: SafetensorsFolder, args: ModelArgs, mapping: Mapping,
                 rank: int, transform=None,
                 quant: QuantConfig | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (name, shard) that rank `rank` loads: its layers, plus embedding or head by stage.
    `transform(name, full)` may replace a full tensor by others before the split (quantization:
    a weight becomes its qweight, scales and zeros)."""
    pp_rank = mapping.pp_rank(rank)
    for name, full in convert_hf_tensors(
            source, args, layers=mapping.layer_range(args, rank),
            with_embedding=pp_rank == 0, with_head=pp_rank == mapping.pp_size - 1,
            quant=quant):
        if (name == "lm_head.weight" and args.tie_word_embeddings and mapping.world_size == 1):
            continue
        for out_name, out in (transform(name, full) if transform else ((name, full),)):
            yield out_name, shard_for_rank(out_name, out, args, mapping, rank)


__all__ = ["SafetensorsFolder", "check_layer_count", "read_hf_config", "convert_hf_tensors",
           "shard_for_rank", "rank_tensors", "layer_index"]
