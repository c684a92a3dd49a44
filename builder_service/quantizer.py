"""Which tensors a quantized build quantizes: the decoder layers' linear weights, each replaced by
the tensors its quantized layer holds (`quantized_linear.quantize_weight`), before the split
over ranks so that every rank's shard is a slice of one quantization. Embeddings, norms, biases,
the head and the linears that QuantConfig.exclude_modules names stay in the engine dtype.
A weight that holds NaN or inf is refused: its scales would be NaN and so would every logit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import torch

from runtime_service.errors import InvalidRequest
from runtime_service.format.engine_config import QuantConfig
from runtime_service.model.layers.quantized_linear import WeightQuant, quantize_weight

LINEAR_WEIGHT = re.compile(r"^layers\.\d+\.(attn\.(qkv|o)_proj|mlp\.(gate_up|down)_proj)\.weight$")

TensorTransform = Callable[[str, torch.Tensor], Iterator[tuple[str, torch.Tensor]]]


def is_quantized_linear(name: str) -> bool:
    return LINEAR_WEIGHT.match(name) is not None


def quantizing(quant: QuantConfig, scale_dtype: torch.dtype,
               replaced: dict[str, torch.Tensor] | None = None,
               unquantized: frozenset[str] = frozenset()) -> TensorTransform | None:
    """(name, full tensor) -> the tensors to write in its place, or None when nothing changes.
    `replaced` holds full tensors that a calibration pass rewrote (AWQ's scaled norms and
    weights); they are used instead of the source's. Linears named in `unquantized`
    (`layers.3.mlp.down_proj`) keep their float weight."""
    weight_quant = WeightQuant.for_algo(quant.algo, quant.group_size)
    if weight_quant is None and not replaced:
        return None
    replaced = replaced or {}

    def transform(name: str, full: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        full = replaced.get(name, full)
        if weight_quant is None or not is_quantized_linear(name) \
                or name[:-len(".weight")] in unquantized:
            yield name, full
            return
        if not torch.isfinite(full).all():
            raise InvalidRequest(f"source weight {name} holds NaN or inf; a linear is "
                                 "quantized only from finite weights")
        base = name[:-len("weight")]
        for suffix, tensor in quantize_weight(full, weight_quant, scale_dtype).items():
            yield base + suffix, tensor

    return transform
