"""`kiln.quantization.QuantAlgo` and `QuantConfig`: how ModelConfig asks for quantization.

The algorithm names are the HLAPI's; `builder_name` says what the Builder calls the ones Kiln
implements. Asking for one Kiln does not implement is refused with a message naming those it
does, and one the runtime cannot load yet is refused before any build starts (see LLM).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kiln._checks import Checked, integer, one_of
from kiln.errors import InvalidArgument


class QuantAlgo(str, enum.Enum):
    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W4A16_AWQ = "W4A16_AWQ"
    W4A8_AWQ = "W4A8_AWQ"
    W4A16_GPTQ = "W4A16_GPTQ"
    W8A8_SQ_PER_CHANNEL = "W8A8_SQ_PER_CHANNEL"
    W8A8_SQ_PER_TENSOR_PLUGIN = "W8A8_SQ_PER_TENSOR_PLUGIN"
    FP8 = "FP8"
    INT8 = "INT8"


WEIGHT_ALGOS = {QuantAlgo.W4A16_AWQ: "W4A16_AWQ", QuantAlgo.W8A16: "W8A16", QuantAlgo.FP8: "FP8"}
KV_CACHE_ALGOS = {QuantAlgo.INT8: "int8", QuantAlgo.FP8: "fp8"}


def _builder_name(field: str, algo: QuantAlgo | None, names: dict, unset: str) -> str:
    """The Builder's spelling of `algo`, or InvalidArgument naming what Kiln implements."""
    if algo is None:
        return unset
    if algo not in names:
        raise InvalidArgument(
            f"{field} {algo.name} is not implemented by Kiln; use one of "
            f"{', '.join(a.name for a in names)} or None")
    return names[algo]


@dataclass(slots=True)
class QuantConfig(Checked):
    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None
    group_size: int = 128

    @property
    def builder_algo(self) -> str:
        """The Builder's name for the weight algorithm ("NONE" when unquantized)."""
        return _builder_name("quant_algo", self.quant_algo, WEIGHT_ALGOS, "NONE")

    @property
    def builder_kv_cache_dtype(self) -> str:
        return _builder_name("kv_cache_quant_algo", self.kv_cache_quant_algo, KV_CACHE_ALGOS,
                             "auto")

    @property
    def requires_quantization(self) -> bool:
        return self.quant_algo is not None or self.kv_cache_quant_algo is not None


QuantConfig._checks = {"quant_algo": one_of(QuantAlgo, optional=True),
                       "kv_cache_quant_algo": one_of(QuantAlgo, optional=True),
                       "group_size": integer(1, 4096)}
