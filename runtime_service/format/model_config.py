"""The architecture of a LLaMA-family model, read from an HF config or a Kiln config.json.

`ModelArgs` is the one description the model, the KV cache, the builder and the engine format
share. It is built from HF's config.json fields (transformers 4 and 5 spellings) and written back
into Kiln's config.json under "model".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from runtime_service.errors import InvalidRequest

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")

# Far above any LLaMA-family model (Llama 3.1 405B: 126 layers, hidden 16384, intermediate
# 53248, 128 heads, vocabulary 128256; Llama 4 Scout: 10M positions), and low enough that a
# hostile config.json cannot make a loop over layers or a table of positions run for hours.
MAX_SIZES = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18,
             "num_layers": 1024, "num_heads": 1024, "num_kv_heads": 1024, "head_dim": 1024,
             "max_position_embeddings": 1 << 27}
MAX_POSITIONS = MAX_SIZES["max_position_embeddings"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unset_token(token) -> bool:
    """Old LLaMA conversions write `"pad_token_id": -1` for "none"."""
    return token is None or (_is_int(token) and token < 0)


def _positive_number(owner: str, name: str, value) -> None:
    """A finite float (or int) > 0, for a field that scales the model's math."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"{owner}.{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class RopeScaling:
    """Rotary scaling as transformers defines it for LLaMA ("default" means none)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise InvalidRequest(
                f"rope_scaling.rope_type={self.rope_type!r:.40} is not supported; "
                f"use one of {', '.join(SUPPORTED_ROPE_TYPES)}")
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            _positive_number("rope_scaling", name, getattr(self, name))
        positions = self.original_max_position_embeddings
        if not _is_int(positions) or not 0 < positions <= MAX_POSITIONS:
            raise InvalidRequest(f"rope_scaling.original_max_position_embeddings must be an "
                                 f"integer in [1, {MAX_POSITIONS}], got {positions!r:.40}")
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise InvalidRequest("rope_scaling.high_freq_factor must exceed low_freq_factor")


REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "num_attention_heads")


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = None
    architecture: str = "LlamaForCausalLM"

    def __post_init__(self):
        for name, limit in MAX_SIZES.items():
            value = getattr(self, name)
            if not _is_int(value) or not 0 < value <= limit:
                raise InvalidRequest(
                    f"model.{name} must be an integer in [1, {limit}], got {value!r:.40}")
        _positive_number("model", "rms_norm_eps", self.rms_norm_eps)
        _positive_number("model", "rope_theta", self.rope_theta)
        if not isinstance(self.rope_scaling, RopeScaling):
            raise InvalidRequest("model.rope_scaling must be an object")
        tokens = {"bos_token_id": self.bos_token_id, "pad_token_id": self.pad_token_id,
                  **{f"eos_token_ids[{i}]": t for i, t in enumerate(self.eos_token_ids)}}
        for name, token in tokens.items():
            if token is not None and (not _is_int(token) or not 0 <= token < 1 << 31):
                raise InvalidRequest(f"model.{name} must be a token id (an integer >= 0), "
                                     f"got {token!r:.40}")
        if len(self.eos_token_ids) > 1024:
            raise InvalidRequest(f"model.eos_token_ids holds {len(self.eos_token_ids)} ids; "
                                 f"at most 1024")
        if self.num_heads % self.num_kv_heads:
            raise InvalidRequest(
                f"model.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise InvalidRequest(f"model.head_dim must be even for rotary, got {self.head_dim}")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise InvalidRequest(
                f"architecture {self.architecture!r} is not supported; Kiln serves "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_heads_per_rank(self, tp_size: int) -> int:
        """KV heads each of `tp_size` ranks holds: its share, or one repeated head when there
        are fewer KV heads than ranks (layers/linear.py local_rows)."""
        return max(1, self.num_kv_heads // tp_size)

    @classmethod
    def from_hf_config(cls, hf: dict) -> "ModelArgs":
        """Reads an HF config.json dict; raises InvalidRequest for anything not LLaMA."""
        architectures = hf.get("architectures") or ["LlamaForCausalLM"]
        if not isinstance(architectures, list):
            raise InvalidRequest(f"config.json's architectures must be a list of class names, "
                                 f"got {architectures!r:.80}")
        model_type = hf.get("model_type", "llama")
        if model_type != "llama" or architectures[0] not in SUPPORTED_ARCHITECTURES:
            raise InvalidRequest(
                f"unknown architecture {architectures[0]!r} (model_type {model_type!r}); "
                f"Kiln serves LLaMA-family models ({', '.join(SUPPORTED_ARCHITECTURES)})")
        if hf.get("hidden_act", "silu") != "silu":
            raise InvalidRequest(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
        rope, legacy = hf.get("rope_parameters") or {}, hf.get("rope_scaling") or {}
        for name, value in (("rope_parameters", rope), ("rope_scaling", legacy)):
            if not isinstance(value, dict):
                raise InvalidRequest(f"config.json's {name} must be an object, got "
                                     f"{value!r:.80}")
        rope = {**legacy, **rope}
        rope_theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        scaling_fields = {f.name for f in dataclasses.fields(RopeScaling)}
        scaling = RopeScaling(rope_type=rope_type,
                              **{k: v for k, v in rope.items() if k in scaling_fields})
        missing = [name for name in REQUIRED_HF_FIELDS
                   if not (isinstance(hf.get(name), int) and hf[name] > 0)]
        if missing:
            raise InvalidRequest(f"config.json lacks a positive integer {', '.join(missing)}; it "
                                 f"is not a complete LLaMA config")
        num_heads = hf["num_attention_heads"]
        eos = hf.get("eos_token_id", 2)
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        eos_ids = tuple(t for t in eos_ids if not _unset_token(t))
        if not isinstance(rope_theta, (int, float)) or isinstance(rope_theta, bool):
            raise InvalidRequest(f"config.json's rope_theta must be a number, got "
                                 f"{rope_theta!r:.40}")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            bos_token_id=None if _unset_token(hf.get("bos_token_id")) else hf["bos_token_id"],
            eos_token_ids=eos_ids,
            pad_token_id=None if _unset_token(hf.get("pad_token_id")) else hf["pad_token_id"],
            architecture=architectures[0],
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelArgs":
        if not isinstance(data, dict) or not isinstance(data.get("rope_scaling", {}), dict):
            raise InvalidRequest("config.json's model (and its rope_scaling) must be objects")
        data = dict(data)
        data["rope_scaling"] = RopeScaling(**data.get("rope_scaling", {}))
        data["eos_token_ids"] = tuple(data.get("eos_token_ids", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidRequest(f"unknown model fields in config.json: {sorted(unknown)}")
        return cls(**data)
