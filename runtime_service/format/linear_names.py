"""Which decoder linears a quantized engine leaves in its float dtype (QuantConfig.exclude_modules).

Users name modules the way the tool they came from does, so a pattern is matched, with
`fnmatch` as TensorRT-LLM matches its own `exclude_modules`, against every name the linear has:
Kiln's (`layers.3.mlp.down_proj`), HF transformers' (`model.layers.3.mlp.down_proj`) and
TensorRT-LLM's (`transformer.layers.3.mlp.proj`). Kiln runs q, k and v as one linear and gate
and up as another, so excluding either part keeps the whole fused linear unquantized: the
engine never quantizes what was asked to stay exact, at the cost of a few more bytes.

A pattern may match nothing (TensorRT-LLM's usual list names routers and embeddings, which
LLaMA has none of or never quantizes): that is accepted and recorded, as the peer accepts and
records it, and the builder names it in a warning (`matching_no_linear`), so a typo is seen.
"""

from __future__ import annotations

import fnmatch
import functools
import re

from runtime_service.errors import InvalidRequest

# Kiln's fused linear -> its other names, with {i} for the layer index.
ALIASES: dict[str, tuple[str, ...]] = {
    "attn.qkv_proj": ("model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj",
                      "model.layers.{i}.self_attn.v_proj", "transformer.layers.{i}.attention.qkv"),
    "attn.o_proj": ("model.layers.{i}.self_attn.o_proj", "transformer.layers.{i}.attention.dense"),
    "mlp.gate_up_proj": ("model.layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.up_proj",
                         "transformer.layers.{i}.mlp.fc", "transformer.layers.{i}.mlp.gate",
                         "transformer.layers.{i}.mlp.fused_fc"),
    "mlp.down_proj": ("model.layers.{i}.mlp.down_proj", "transformer.layers.{i}.mlp.proj"),
}
LINEARS = tuple(ALIASES)

MAX_PATTERNS = 1024
MAX_PATTERN_CHARS = 256
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def check_patterns(patterns, owner: str = "quant.exclude_modules") -> tuple[str, ...]:
    """The patterns as a tuple, or InvalidRequest naming what is wrong with them."""
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise InvalidRequest(f"{owner} must be a list of module names, got {patterns!r:.80}")
    if len(patterns) > MAX_PATTERNS:
        raise InvalidRequest(f"{owner} holds {len(patterns)} names; at most {MAX_PATTERNS}")
    for pattern in patterns:
        if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS \
                or not _PRINTABLE.fullmatch(pattern):
            raise InvalidRequest(
                f"{owner} entries must be module names or fnmatch patterns of 1-"
                f"{MAX_PATTERN_CHARS} printable characters without spaces, got {pattern!r:.80}")
    return tuple(patterns)


def kiln_name(layer: int, linear: str) -> str:
    return f"layers.{layer}.{linear}"


def names_of(layer: int, linear: str) -> tuple[str, ...]:
    """Every name of one fused linear: Kiln's first, then HF's and TensorRT-LLM's."""
    return (kiln_name(layer, linear), *(a.format(i=layer) for a in ALIASES[linear]))


@functools.lru_cache(maxsize=64)
def unquantized_linears(patterns: tuple[str, ...], num_layers: int) -> frozenset[str]:
    """The Kiln names (`layers.3.mlp.down_proj`) of the linears that any pattern matches by
    any of their names. Cached: the builder and the loader ask for the same config's often,
    and a long list over a deep model is millions of matches."""
    if not patterns:
        return frozenset()
    compiled = [re.compile(fnmatch.translate(p)) for p in set(patterns)]
    return frozenset(
        kiln_name(layer, linear) for layer in range(num_layers) for linear in LINEARS
        if any(c.match(name) for c in compiled for name in names_of(layer, linear)))


def matching_no_linear(patterns: tuple[str, ...], num_layers: int) -> tuple[str, ...]:
    """The patterns, in their order, that match no name of any decoder linear of a model this
    deep (matched as `unquantized_linears` matches them)."""
    names = [name for layer in range(num_layers) for linear in LINEARS
             for name in names_of(layer, linear)]
    return tuple(p for p in dict.fromkeys(patterns)
                 if not any(map(re.compile(fnmatch.translate(p)).match, names)))
