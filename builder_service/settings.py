"""What one build is asked for, validated before any byte of the model is read.

`BuildSpec` holds the request as given; limits left unset take defaults that fit the model
(`build_config`), because a sensible max_seq_len depends on the model's position range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runtime_service.format.engine_config import (SUPPORTED_DTYPES, BuildConfig, Mapping, QuantConfig,
                                           Target)
from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.format.model_config import ModelArgs
from runtime_service.store import check_engine_name

TARGET_DEVICES = ("any", "cpu", "cuda")
SUPPORTED_QUANT_ALGOS = ("NONE", "W4A16", "W4A16_AWQ", "W8A16", "FP8")
SUPPORTED_KV_CACHE_DTYPES = ("auto", "int8", "fp8")
CALIBRATED_ALGOS = ("W4A16_AWQ",)
DEFAULT_MAX_SEQ_LEN = 2048
DEFAULT_MAX_INPUT_LEN = 1024
DEFAULT_MAX_NUM_TOKENS = 4096
DEFAULT_MAX_BATCH_SIZE = 64
# Upper bounds a build may ask for: far above any real deployment, low enough that sizes derived
# from them (KV blocks, beam rows, sampling buffers) stay finite integers.
MAX_LIMITS = {"max_batch_size": 4096, "max_input_len": 1 << 20, "max_seq_len": 1 << 20,
              "max_num_tokens": 1 << 20, "max_beam_width": 64}
CAPABILITY = re.compile(r"^[0-9]{1,2}\.[0-9]{1,2}$")      # CUDA compute capability, e.g. "9.0"


def check_quant_supported(quant: QuantConfig) -> None:
    """Refuses, naming what this builder makes, a quantization it does not implement, rather
    than silently building something else."""
    if quant.algo not in SUPPORTED_QUANT_ALGOS:
        raise FailedPrecondition(
            f"quantization {quant.algo} is not built by this builder; it builds "
            f"{', '.join(SUPPORTED_QUANT_ALGOS)}")
    if quant.kv_cache_dtype not in SUPPORTED_KV_CACHE_DTYPES:
        raise FailedPrecondition(
            f"kv_cache_dtype {quant.kv_cache_dtype} is not built by this builder; it builds "
            f"{', '.join(SUPPORTED_KV_CACHE_DTYPES)}")


def max_supported_seq_len(model: ModelArgs) -> int:
    """Positions the model can attend over: linear and dynamic rope scaling stretch the range."""
    scaling = model.rope_scaling
    if scaling.rope_type in ("linear", "dynamic"):
        return int(model.max_position_embeddings * scaling.factor)
    return model.max_position_embeddings


@dataclass(frozen=True)
class BuildSpec:
    source: str
    name: str = ""
    dtype: str = "bfloat16"
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None
    max_beam_width: int | None = None
    quant: QuantConfig = field(default_factory=QuantConfig)
    mapping: Mapping = field(default_factory=Mapping)
    target: Target = field(default_factory=Target)
    calib_data: str = ""       # text or JSONL file, path or s3:// URI; "" = the default corpus

    def __post_init__(self):
        if not self.source:
            raise InvalidRequest("build source is empty; give a path, s3:// URI or upload:// id")
        if len(self.source) > 4096:
            raise InvalidRequest("build source is longer than 4096 characters")
        if self.name:
            check_engine_name(self.name)
        if self.dtype not in SUPPORTED_DTYPES:
            raise InvalidRequest(f"dtype must be one of {SUPPORTED_DTYPES}, got {self.dtype!r}")
        for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens",
                     "max_beam_width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int)
                                      or not 1 <= value <= MAX_LIMITS[name]):
                raise InvalidRequest(
                    f"{name} must be an integer in [1, {MAX_LIMITS[name]}], got {value!r}")
        if self.target.device not in TARGET_DEVICES:
            raise InvalidRequest(
                f"target device must be one of {TARGET_DEVICES}, got {self.target.device!r}")
        if self.target.capability and not CAPABILITY.match(self.target.capability):
            raise InvalidRequest(f"target capability must look like '9.0' (major.minor), got "
                                 f"{self.target.capability[:20]!r}")
        check_quant_supported(self.quant)
        calibrates = self.quant.algo in CALIBRATED_ALGOS
        if not calibrates and (self.calib_data or self.quant.calib_num_samples
                               or self.quant.calib_seq_len):
            raise InvalidRequest(
                f"calibration settings are used by {', '.join(CALIBRATED_ALGOS)} only, not by "
                f"quant {self.quant.algo}")
        if len(self.calib_data) > 4096:
            raise InvalidRequest("calib_data is longer than 4096 characters")

    def build_config(self, model: ModelArgs) -> BuildConfig:
        """The engine's limits: the requested ones checked against the model, the rest defaults."""
        limit = max_supported_seq_len(model)
        max_seq_len = self.max_seq_len or min(DEFAULT_MAX_SEQ_LEN, limit)
        if max_seq_len > limit:
            raise InvalidRequest(
                f"max_seq_len={max_seq_len} exceeds the model's {limit} positions "
                f"(max_position_embeddings={model.max_position_embeddings}, rope scaling "
                f"{model.rope_scaling.rope_type})")
        max_input_len = self.max_input_len or min(DEFAULT_MAX_INPUT_LEN, max_seq_len)
        max_num_tokens = self.max_num_tokens or max(DEFAULT_MAX_NUM_TOKENS, max_input_len)
        return BuildConfig(dtype=self.dtype,
                           max_batch_size=self.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
                           max_input_len=max_input_len, max_seq_len=max_seq_len,
                           max_num_tokens=max_num_tokens,
                           max_beam_width=self.max_beam_width or 1)
