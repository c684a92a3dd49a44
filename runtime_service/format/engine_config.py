"""The settings stored in a checkpoint's or engine's config.json, as frozen dataclasses.

A checkpoint holds model + quant + mapping; an engine adds build (its serving limits) and target
(the device it was packed for). One source of truth: the builder writes these, the runtime reads
them, and the engine key is derived from their canonical JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.format.linear_names import (LINEARS, check_patterns, kiln_name,
                                                  unquantized_linears)
from runtime_service.format.model_config import ModelArgs

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
QUANT_ALGOS = ("NONE", "W4A16", "W4A16_AWQ", "W8A16", "FP8")
INT4_ALGOS = ("W4A16", "W4A16_AWQ")
INT4_GROUP_SIZES = (128, 64, 32)
DEFAULT_GROUP_SIZE = 128
KV_CACHE_DTYPES = ("auto", "int8", "fp8")
# The HLAPI's other QuantAlgo names: known, deliberately not built (FAILED_PRECONDITION).
UNBUILT_QUANT_ALGOS = ("W4A8_AWQ", "W4A16_GPTQ", "W8A8_SQ_PER_CHANNEL",
                       "W8A8_SQ_PER_TENSOR_PLUGIN", "INT8")


def _positive(owner: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{owner}.{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class QuantConfig:
    """How weights (and optionally the KV cache) are stored. NONE means the build dtype.

    group_size matters to the int4 algorithms only. The calib_* fields record the data an
    activation-aware algorithm was calibrated on (its sha256 and how much of it), so that they
    enter the engine key and the engine says what it was made from; they stay empty otherwise.
    exclude_modules are module names or patterns whose decoder linears keep the float dtype
    (format/linear_names.py); a pre-quantized checkpoint lists the linears it stores unquantized.
    """

    algo: str = "NONE"
    group_size: int = DEFAULT_GROUP_SIZE
    kv_cache_dtype: str = "auto"
    calib_sha256: str = ""
    calib_num_samples: int = 0
    calib_seq_len: int = 0
    exclude_modules: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "exclude_modules", check_patterns(self.exclude_modules))
        if self.algo in UNBUILT_QUANT_ALGOS:
            raise FailedPrecondition(f"quant.algo {self.algo} is not built by Kiln; it builds "
                                     f"{', '.join(QUANT_ALGOS)}")
        if self.algo not in QUANT_ALGOS:
            raise InvalidRequest(f"quant.algo must be one of {QUANT_ALGOS}, got {self.algo!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InvalidRequest(
                f"quant.kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        _positive("quant", "group_size", self.group_size)
        if self.algo in INT4_ALGOS and self.group_size not in INT4_GROUP_SIZES:
            raise InvalidRequest(f"quant.group_size must be one of {INT4_GROUP_SIZES} for "
                                 f"{self.algo}, got {self.group_size}")
        for name in ("calib_num_samples", "calib_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidRequest(f"quant.{name} must be an integer >= 0, got {value!r}")

    def to_dict(self) -> dict:
        """The canonical form (config.json, the engine key); without exclude_modules when there
        are none, so engines built before the field existed keep their keys."""
        data = dataclasses.asdict(self)
        data["exclude_modules"] = list(self.exclude_modules)
        if not self.exclude_modules:
            del data["exclude_modules"]
        return data

    def unquantized_linears(self, model: ModelArgs) -> frozenset[str]:
        """The decoder linears (Kiln names) that stay in the float dtype; none when unquantized."""
        if self.algo == "NONE":
            return frozenset()
        return unquantized_linears(self.exclude_modules, model.num_layers)

    def check_fits(self, model: ModelArgs, tp_size: int = 1) -> None:
        """InvalidRequest unless an int4 group size divides every quantized linear's input width
        on each rank (a row-parallel layer's is split by tp_size), naming the widths and the
        group sizes that would work."""
        if self.algo not in INT4_ALGOS:
            return
        kept = self.unquantized_linears(model)
        quantized = {linear.split(".")[1] for linear in LINEARS for layer in
                     range(model.num_layers) if kiln_name(layer, linear) not in kept}
        widths = {"qkv_proj/gate_up_proj": model.hidden_size,
                  "o_proj": model.q_size // tp_size,
                  "down_proj": model.intermediate_size // tp_size}
        widths = {name: width for name, width in widths.items()
                  if quantized.intersection(name.split("/"))}      # excluded everywhere: any
        bad = sorted(name for name, width in widths.items() if width % self.group_size)
        if not bad:
            return
        fits = [g for g in INT4_GROUP_SIZES if all(w % g == 0 for w in widths.values())]
        listed = ", ".join(f"{name} {width}" for name, width in widths.items())
        advice = (f"group sizes that work: {', '.join(map(str, fits))}" if fits
                  else f"none of the group sizes {INT4_GROUP_SIZES} divides them all")
        split = f" per rank at tp_size {tp_size}" if tp_size > 1 else ""
        raise InvalidRequest(
            f"group_size {self.group_size} does not divide the input width of {', '.join(bad)}"
            f" (input widths{split}: {listed}); {advice}")


@dataclass(frozen=True)
class Mapping:
    """How the model is split over ranks: rank r has tp rank r % tp_size, pp rank r // tp_size."""

    tp_size: int = 1
    pp_size: int = 1

    def __post_init__(self):
        _positive("mapping", "tp_size", self.tp_size)
        _positive("mapping", "pp_size", self.pp_size)

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp_size

    def pp_rank(self, rank: int) -> int:
        return rank // self.tp_size

    def check_divides(self, model: ModelArgs) -> None:
        """Raises InvalidRequest when the split does not divide heads, KV heads (or is not a
        multiple of them: each rank then repeats one), the MLP width or layers (a vocabulary it
        does not divide is padded: layers/linear.py local_rows)."""
        kv, tp = model.num_kv_heads, self.tp_size
        if model.num_heads % tp or (kv % tp if kv >= tp else tp % kv):
            raise InvalidRequest(
                f"tp_size={tp} must divide num_heads={model.num_heads}, and divide "
                f"num_kv_heads={kv} or be a multiple of it (then each rank repeats one KV head)")
        if model.intermediate_size % self.tp_size:
            raise InvalidRequest(
                f"tp_size={self.tp_size} must divide intermediate_size={model.intermediate_size}")
        if model.num_layers % self.pp_size:
            raise InvalidRequest(
                f"pp_size={self.pp_size} must divide num_layers={model.num_layers}")

    def layer_range(self, model: ModelArgs, rank: int) -> range:
        per_stage = model.num_layers // self.pp_size
        start = self.pp_rank(rank) * per_stage
        return range(start, start + per_stage)

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "tp_size": self.tp_size, "pp_size": self.pp_size}


@dataclass(frozen=True)
class BuildConfig:
    """The serving limits an engine is built for; requests beyond them are refused."""

    dtype: str = "bfloat16"
    max_batch_size: int = 64
    max_input_len: int = 1024
    max_seq_len: int = 2048
    max_num_tokens: int = 4096
    max_beam_width: int = 1

    def __post_init__(self):
        if self.dtype not in SUPPORTED_DTYPES:
            raise InvalidRequest(f"build.dtype must be one of {SUPPORTED_DTYPES}, got {self.dtype!r}")
        for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens",
                     "max_beam_width"):
            _positive("build", name, getattr(self, name))
        if self.max_input_len > self.max_seq_len:
            raise InvalidRequest(
                f"build.max_input_len ({self.max_input_len}) must not exceed max_seq_len "
                f"({self.max_seq_len})")


@dataclass(frozen=True)
class Target:
    """The device an engine was packed for ("cpu" or "cuda") and its compute capability."""

    device: str = "any"
    capability: str = ""


@dataclass(frozen=True)
class EngineConfig:
    """The whole config.json of a checkpoint (build is None) or an engine."""

    model: ModelArgs
    quant: QuantConfig = field(default_factory=QuantConfig)
    mapping: Mapping = field(default_factory=Mapping)
    build: BuildConfig | None = None
    target: Target | None = None
    format: str = "kiln-checkpoint"
    format_version: int = 1

    def to_dict(self) -> dict:
        data = {
            "format": self.format,
            "format_version": self.format_version,
            "model": self.model.to_dict(),
            "quant": self.quant.to_dict(),
            "mapping": self.mapping.to_dict(),
        }
        if self.build is not None:
            data["build"] = dataclasses.asdict(self.build)
        if self.target is not None:
            data["target"] = dataclasses.asdict(self.target)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "EngineConfig":
        sections = ("mapping", "quant", "build", "target")
        if not isinstance(data, dict) or any(not isinstance(data.get(s) or {}, dict)
                                             for s in sections):
            raise InvalidRequest(f"config.json is malformed: it and its {', '.join(sections)} "
                                 "must be JSON objects")
        try:
            mapping = data.get("mapping", {})
            return cls(
                model=ModelArgs.from_dict(data["model"]),
                quant=QuantConfig(**data.get("quant", {})),
                mapping=Mapping(tp_size=mapping.get("tp_size", 1), pp_size=mapping.get("pp_size", 1)),
                build=BuildConfig(**data["build"]) if data.get("build") else None,
                target=Target(**data["target"]) if data.get("target") else None,
                format=data.get("format", "kiln-checkpoint"),
                format_version=data.get("format_version", 1),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidRequest(f"config.json is malformed: {exc}") from exc
