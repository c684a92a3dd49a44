"""`kiln.quantization.QuantAlgo` and `QuantConfig`: how ModelConfig asks for quantization.

The algorithm names are the HLAPI's; `builder_name` says what the Builder calls the ones Kiln
implements. Asking for one Kiln does not build is a FailedPrecondition naming those it does,
and one the runtime cannot load is refused before any build starts (see LLM). group_size
matters to the int4 algorithms (128, 64 or 32); W4A16_AWQ calibrates on `calib_data` (a text
or JSONL file, path or s3://; empty: the standard library's documentation topics).
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from kiln._checks import Checked, boolean, integer, number, one_of, text
from kiln.errors import FailedPrecondition, InvalidArgument


class _MembersAndValues(enum.EnumMeta):
    """`"FP8" in QuantAlgo` asks about values, as the HLAPI's enums answer it (Python 3.11's
    EnumMeta raises TypeError for a plain string)."""

    def __contains__(cls, item) -> bool:
        try:
            cls(item)
        except ValueError:
            return False
        return True


class QuantAlgo(enum.StrEnum, metaclass=_MembersAndValues):
    """A string enum, as the HLAPI's: `str()`, f-strings and JSON give the value ("FP8")."""

    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W4A16_AWQ = "W4A16_AWQ"
    W4A8_AWQ = "W4A8_AWQ"
    W4A16_GPTQ = "W4A16_GPTQ"
    W8A8_SQ_PER_CHANNEL = "W8A8_SQ_PER_CHANNEL"
    W8A8_SQ_PER_TENSOR_PLUGIN = "W8A8_SQ_PER_TENSOR_PLUGIN"
    W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN = "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
    W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN = "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN"
    W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN = "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN"
    FP8 = "FP8"
    INT8 = "INT8"


WEIGHT_ALGOS = {QuantAlgo.W4A16: "W4A16", QuantAlgo.W4A16_AWQ: "W4A16_AWQ",
                QuantAlgo.W8A16: "W8A16", QuantAlgo.FP8: "FP8"}
KV_CACHE_ALGOS = {QuantAlgo.INT8: "int8", QuantAlgo.FP8: "fp8"}


class QuantMode(enum.IntFlag):
    """What an algorithm quantizes, as flags, with the HLAPI's questions about them (code that
    asks `config.quant_config.quant_mode.has_any_quant()` runs unchanged)."""

    NONE = 0
    INT4_WEIGHTS = 1
    INT8_WEIGHTS = 2
    ACTIVATIONS = 4
    PER_CHANNEL = 8
    PER_TOKEN = 16
    PER_GROUP = 32
    INT8_KV_CACHE = 64
    FP8_KV_CACHE = 128
    FP8_QDQ = 256

    @staticmethod
    def from_quant_algo(quant_algo: "QuantAlgo | None" = None,
                        kv_cache_quant_algo: "QuantAlgo | None" = None) -> "QuantMode":
        """The HLAPI's flags for each algorithm, but for FP8 (see _MODES); members or their
        string values."""
        mode = _MODES.get(quant_algo, QuantMode.NONE)
        if kv_cache_quant_algo == QuantAlgo.INT8:
            mode |= QuantMode.INT8_KV_CACHE
        elif kv_cache_quant_algo == QuantAlgo.FP8:
            mode |= QuantMode.FP8_KV_CACHE
        return mode

    @staticmethod
    def from_description(quantize_weights: bool = False, quantize_activations: bool = False,
                         per_token: bool = False, per_channel: bool = False,
                         per_group: bool = False, use_int4_weights: bool = False,
                         use_int8_kv_cache: bool = False, use_fp8_kv_cache: bool = False,
                         use_fp8_qdq: bool = False) -> "QuantMode":
        """The flags for a description in words. Activations are only quantized with the
        weights, and per-token or per-channel scaling needs both, as the HLAPI requires."""
        if quantize_activations and not quantize_weights:
            raise InvalidArgument("QuantMode.from_description: quantize_activations needs "
                                  "quantize_weights")
        if (per_token or per_channel) and not (quantize_weights and quantize_activations):
            raise InvalidArgument("QuantMode.from_description: per_token and per_channel need "
                                  "quantize_weights and quantize_activations")
        wanted = {QuantMode.INT4_WEIGHTS: quantize_weights and use_int4_weights,
                  QuantMode.INT8_WEIGHTS: quantize_weights and not use_int4_weights,
                  QuantMode.ACTIVATIONS: quantize_activations,
                  QuantMode.PER_CHANNEL: per_channel, QuantMode.PER_TOKEN: per_token,
                  QuantMode.PER_GROUP: per_group,
                  QuantMode.INT8_KV_CACHE: use_int8_kv_cache,
                  QuantMode.FP8_KV_CACHE: use_fp8_kv_cache, QuantMode.FP8_QDQ: use_fp8_qdq}
        return QuantMode(sum(flag for flag, on in wanted.items() if on))

    @staticmethod
    def use_smooth_quant(per_token: bool = False, per_channel: bool = False) -> "QuantMode":
        """Int8 weights and activations, scaled per token and/or per channel."""
        return QuantMode.from_description(True, True, per_token, per_channel)

    @staticmethod
    def use_weight_only(use_int4_weights: bool = False, per_group: bool = False) -> "QuantMode":
        return QuantMode.from_description(quantize_weights=True, per_group=per_group,
                                          use_int4_weights=use_int4_weights)

    def _weights_only_with(self, weights: "QuantMode") -> bool:
        """Exactly `weights` among the weight and activation flags."""
        mask = QuantMode.INT4_WEIGHTS | QuantMode.INT8_WEIGHTS | QuantMode.ACTIVATIONS
        return self & mask == weights

    def is_int4_weight_only(self) -> bool:
        return self._weights_only_with(QuantMode.INT4_WEIGHTS)

    def is_int8_weight_only(self) -> bool:
        return self._weights_only_with(QuantMode.INT8_WEIGHTS)

    def is_weight_only(self) -> bool:
        return self.is_int4_weight_only() or self.is_int8_weight_only()

    def is_int4_weight_only_per_group(self) -> bool:
        return self.is_int4_weight_only() and self.has_per_group_scaling()

    def has_weight_quant(self) -> bool:
        return bool(self & (QuantMode.INT4_WEIGHTS | QuantMode.INT8_WEIGHTS))

    def has_act_or_weight_quant(self) -> bool:
        return bool(self & (QuantMode.INT4_WEIGHTS | QuantMode.INT8_WEIGHTS
                            | QuantMode.ACTIVATIONS))

    def has_act_and_weight_quant(self) -> bool:
        return self._weights_only_with(QuantMode.INT8_WEIGHTS | QuantMode.ACTIVATIONS)

    def has_per_token_dynamic_scaling(self) -> bool:
        return QuantMode.PER_TOKEN in self

    def has_act_static_scaling(self) -> bool:
        return bool(self & (QuantMode.ACTIVATIONS | QuantMode.FP8_QDQ)) \
            and not self.has_per_token_dynamic_scaling()

    def has_per_channel_scaling(self) -> bool:
        return QuantMode.PER_CHANNEL in self

    def has_per_group_scaling(self) -> bool:
        return QuantMode.PER_GROUP in self

    def has_fp8_qdq(self) -> bool:
        return QuantMode.FP8_QDQ in self

    def has_int8_kv_cache(self) -> bool:
        return QuantMode.INT8_KV_CACHE in self

    def has_fp8_kv_cache(self) -> bool:
        return QuantMode.FP8_KV_CACHE in self

    def has_kv_cache_quant(self) -> bool:
        return self.has_int8_kv_cache() or self.has_fp8_kv_cache()

    def has_any_quant(self, exclude_kv_cache: bool = False) -> bool:
        weights_or_inputs = bool(self & (QuantMode.INT4_WEIGHTS | QuantMode.INT8_WEIGHTS
                                         | QuantMode.ACTIVATIONS | QuantMode.FP8_QDQ))
        return weights_or_inputs or (not exclude_kv_cache and self.has_kv_cache_quant())

    def set_int8_kv_cache(self) -> "QuantMode":
        return self | QuantMode.INT8_KV_CACHE

    def set_fp8_kv_cache(self) -> "QuantMode":
        return self | QuantMode.FP8_KV_CACHE

    def set_fp8_qdq(self) -> "QuantMode":
        return self | QuantMode.FP8_QDQ


_SMOOTH_QUANT = QuantMode.INT8_WEIGHTS | QuantMode.ACTIVATIONS
_MODES = {
    QuantAlgo.W8A16: QuantMode.INT8_WEIGHTS,
    QuantAlgo.W4A16: QuantMode.INT4_WEIGHTS,
    QuantAlgo.W4A16_AWQ: QuantMode.INT4_WEIGHTS | QuantMode.PER_GROUP,
    QuantAlgo.W4A16_GPTQ: QuantMode.INT4_WEIGHTS | QuantMode.PER_GROUP,
    QuantAlgo.W4A8_AWQ: QuantMode.INT4_WEIGHTS | QuantMode.PER_GROUP,
    QuantAlgo.W8A8_SQ_PER_CHANNEL: _SMOOTH_QUANT | QuantMode.PER_CHANNEL,
    QuantAlgo.W8A8_SQ_PER_TENSOR_PLUGIN: _SMOOTH_QUANT,
    QuantAlgo.W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN:
        _SMOOTH_QUANT | QuantMode.PER_CHANNEL | QuantMode.PER_TOKEN,
    QuantAlgo.W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN: _SMOOTH_QUANT | QuantMode.PER_CHANNEL,
    QuantAlgo.W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN: _SMOOTH_QUANT | QuantMode.PER_TOKEN,
    # Differs from the HLAPI on purpose: its FP8 is FP8_QDQ alone (per-tensor scales calibrated
    # ahead of time), while Kiln's FP8 scales weights per output channel and quantizes inputs
    # per token at run time, so it needs no calibration. The extra PER_CHANNEL | PER_TOKEN say
    # so: has_per_token_dynamic_scaling() is True and has_act_static_scaling() False, as for
    # later HLAPIs' FP8_PER_CHANNEL_PER_TOKEN; has_fp8_qdq() is True as for the HLAPI's FP8.
    QuantAlgo.FP8: QuantMode.FP8_QDQ | QuantMode.PER_CHANNEL | QuantMode.PER_TOKEN,
}


# Later HLAPI QuantConfig fields for FP8 rowwise quantization, which Kiln does not build.
_INERT_PEER_KEYS = {"clamp_val": None, "use_meta_recipe": False}


def _builder_name(field: str, algo: QuantAlgo | None, names: dict, unset: str) -> str:
    """The Builder's spelling of `algo`, or FailedPrecondition naming what Kiln builds."""
    if algo is None:
        return unset
    if algo not in names:
        raise FailedPrecondition(
            f"{field} {algo.name} is not built by Kiln; use one of "
            f"{', '.join(a.name for a in names)} or None")
    return names[algo]


def _module_names(name: str, value):
    """Module names or fnmatch patterns, as the builder takes them (at most 1024, each 1-256
    printable characters without spaces), so a bad one fails here rather than at the build."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) > 1024 \
            or not all(isinstance(v, str) and 0 < len(v) <= 256 and v.isascii()
                       and v.isprintable() and " " not in v for v in value):
        raise InvalidArgument(f"{name} must be a list of at most 1024 module names or patterns "
                              f"(1-256 printable characters, no spaces), got {value!r:.120}")
    return list(value)


@dataclass(slots=True)
class QuantConfig(Checked):
    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None
    group_size: int = 128
    smoothquant_val: float | None = None
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: list[str] | None = None

    calib_data: str | None = None
    calib_num_samples: int = 0
    calib_seq_len: int = 0

    @property
    def quant_mode(self) -> QuantMode:
        return QuantMode.from_quant_algo(self.quant_algo, self.kv_cache_quant_algo)

    @property
    def requires_calibration(self) -> bool:
        """Whether the build runs the model on calibration text: AWQ's scale search. Kiln's
        FP8 and KV caches scale at run time, so they need none."""
        return self.quant_algo is QuantAlgo.W4A16_AWQ

    def asdict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict:
        """Every field, as a new dict whose lists are copies (what `from_dict` takes back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping) -> "QuantConfig":
        """A QuantConfig from `to_dict`'s form or the HLAPI's. Keys of later HLAPI versions
        that tune what Kiln does not build are taken only at their defaults; any other key
        Kiln does not know is refused, naming it, rather than dropped."""
        if not isinstance(config, Mapping):
            raise InvalidArgument(f"QuantConfig.from_dict takes a dict, got "
                                  f"{type(config).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in config if key not in fields and key not in _INERT_PEER_KEYS]
        if unknown:
            raise InvalidArgument(f"QuantConfig.from_dict: unknown key(s) "
                                  f"{', '.join(map(repr, unknown))}; the keys are "
                                  f"{', '.join(fields)}")
        for key, default in _INERT_PEER_KEYS.items():
            if key in config and config[key] != default:
                raise FailedPrecondition(
                    f"QuantConfig {key}={config[key]!r:.80} is not available: Kiln builds no "
                    f"FP8 rowwise recipe, so only {key}={default!r} is accepted")
        return cls(**{key: value for key, value in config.items() if key in fields})

    def is_module_excluded_from_quantization(self, name: str) -> bool:
        """Whether `name` matches one of exclude_modules (fnmatch, case-sensitive)."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude_modules or ())

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
                       "group_size": integer(1, 4096),
                       "smoothquant_val": number(0.0, 1.0, optional=True),
                       "has_zero_point": boolean, "pre_quant_scale": boolean,
                       "exclude_modules": _module_names,
                       "calib_data": text(optional=True),
                       "calib_num_samples": integer(0, 65536),
                       "calib_seq_len": integer(0, 65536)}
