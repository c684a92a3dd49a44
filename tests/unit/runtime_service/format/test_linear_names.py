"""exclude_modules: which decoder linears a pattern keeps unquantized, in any of the three
spellings users bring, and what the engine config and key make of it."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from builder_service.engine_key import canonical_json, engine_key
from runtime_service.errors import InvalidRequest
from runtime_service.format.engine_config import (BuildConfig, EngineConfig, Mapping,
                                                  QuantConfig, Target)
from runtime_service.format.engine_format import FORMAT_VERSION
from runtime_service.format.linear_names import unquantized_linears
from runtime_service.format.model_config import ModelArgs

ARGS = ModelArgs(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=3,
                 num_heads=2, num_kv_heads=1, head_dim=32)


@pytest.mark.parametrize("patterns, kept", [
    # the three spellings of one down projection
    (["layers.1.mlp.down_proj"], {"layers.1.mlp.down_proj"}),
    (["model.layers.1.mlp.down_proj"], {"layers.1.mlp.down_proj"}),
    (["transformer.layers.1.mlp.proj"], {"layers.1.mlp.down_proj"}),
    # wildcards over layers and kinds
    (["*.mlp.down_proj"], {f"layers.{i}.mlp.down_proj" for i in range(3)}),
    (["*attention.dense"], {f"layers.{i}.attn.o_proj" for i in range(3)}),
    (["model.layers.0.*"], {f"layers.0.{n}" for n in
                            ("attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}),
    # one part of a fused linear keeps the whole fused linear exact
    (["model.layers.2.self_attn.k_proj"], {"layers.2.attn.qkv_proj"}),
    (["*up_proj"], {f"layers.{i}.mlp.gate_up_proj" for i in range(3)}),
    (["transformer.layers.0.mlp.gate"], {"layers.0.mlp.gate_up_proj"}),
    # names LLaMA never quantizes or does not have: accepted, nothing kept
    (["lm_head", "*router", "*vocab_embedding", "model.layers.7.mlp.down_proj"], set()),
    ([], set()),
])
def test_a_pattern_keeps_the_linears_any_of_their_names_match(patterns, kept):
    assert unquantized_linears(tuple(patterns), ARGS.num_layers) == kept
    assert QuantConfig(algo="W8A16", exclude_modules=patterns).unquantized_linears(ARGS) == kept


def test_an_unquantized_engine_keeps_nothing_back():
    assert QuantConfig(exclude_modules=("*",)).unquantized_linears(ARGS) == frozenset()


@pytest.mark.parametrize("patterns, words", [
    ("lm_head", "must be a list"),
    ({"lm_head": 1}, "must be a list"),
    ([""], "1-256 printable"),
    (["x" * 257], "1-256 printable"),
    (["model.layers.0 .mlp"], "without spaces"),
    (["lm_head\n"], "printable"),
    ([7], "module names"),
    (["a"] * 1025, "at most 1024"),
])
def test_malformed_exclude_modules_are_refused_naming_the_field(patterns, words):
    with pytest.raises(InvalidRequest, match="quant.exclude_modules") as caught:
        QuantConfig(algo="FP8", exclude_modules=patterns)
    assert words in str(caught.value)


def test_the_config_round_trips_and_only_a_non_empty_list_enters_the_key():
    kept = QuantConfig(algo="W8A16", exclude_modules=["*.mlp.down_proj"])
    config = EngineConfig(model=ARGS, quant=kept)
    assert EngineConfig.from_dict(config.to_dict()).quant == kept
    assert "exclude_modules" not in QuantConfig(algo="W8A16").to_dict()

    def key(quant):
        return engine_key("0" * 64, BuildConfig(), quant, Mapping(), Target())
    plain = QuantConfig(algo="W8A16")
    assert key(kept) != key(plain)
    assert key(plain) == key(QuantConfig(algo="W8A16", exclude_modules=()))
    # engines built before the field existed keep their keys: the document has the old fields
    before = {"algo": "W8A16", "group_size": 128, "kv_cache_dtype": "auto", "calib_sha256": "",
              "calib_num_samples": 0, "calib_seq_len": 0}
    document = {"source": "0" * 64, "build": dataclasses.asdict(BuildConfig()), "quant": before,
                "mapping": Mapping().to_dict(), "target": dataclasses.asdict(Target()),
                "format_version": FORMAT_VERSION}
    assert key(plain) == hashlib.sha256(canonical_json(document)).hexdigest()
