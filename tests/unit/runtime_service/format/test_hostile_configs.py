"""A config.json from outside (an upload, a store, a folder on disk) is refused with an
InvalidRequest naming what is wrong, however it is malformed: never a RecursionError,
AttributeError or TypeError from inside the reader, and never a size that makes a loop over
layers run for hours."""

from __future__ import annotations

import json

import pytest

from runtime_service.errors import InvalidRequest
from runtime_service.format.engine_config import EngineConfig
from runtime_service.format.engine_format import detect_model_kind, read_engine_config
from runtime_service.format.json_input import read_json_object
from runtime_service.format.model_config import ModelArgs

HF = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
      "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


@pytest.mark.parametrize("raw, words", [
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b"[1, 2]", "must hold a JSON object, not list"),
    (b'"llama"', "not str"),
    (b"\xff\xfe\x00\x01garbage", "not valid JSON"),
    (b"{", "not valid JSON"),
])
def test_a_config_json_that_is_not_an_object_is_refused_naming_the_file(tmp_path, raw, words):
    (tmp_path / "config.json").write_bytes(raw)
    for read in (detect_model_kind, read_engine_config):
        with pytest.raises(InvalidRequest, match=words) as caught:
            read(tmp_path)
        assert "config.json" in str(caught.value)


def test_an_oversized_json_file_is_not_read(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b" " * 2048 + b"{}")
    with pytest.raises(InvalidRequest, match="at most 1024"):
        read_json_object(path, max_bytes=1024)


@pytest.mark.parametrize("fields, words", [
    ({"num_hidden_layers": 10 ** 12}, r"num_layers must be an integer in \[1, 1024\]"),
    ({"vocab_size": 1 << 40}, "vocab_size must be an integer"),
    ({"hidden_size": True}, "hidden_size"),
    ({"num_key_value_heads": True}, "num_kv_heads"),
    ({"max_position_embeddings": 1 << 40}, "max_position_embeddings"),
    ({"rms_norm_eps": "x"}, "rms_norm_eps must be a finite number"),
    ({"rms_norm_eps": -1.0}, "rms_norm_eps must be a finite number > 0"),
    ({"rope_theta": "10000"}, "rope_theta must be a number"),
    ({"rope_parameters": {"rope_theta": float("nan")}}, "rope_theta must be a finite"),
    ({"rope_scaling": [1, 2]}, "rope_scaling must be an object"),
    ({"rope_scaling": "linear"}, "rope_scaling must be an object"),
    ({"rope_scaling": {"rope_type": "linear", "factor": float("inf")}}, "factor must be a finite"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                       "original_max_position_embeddings": "8192"}},
     "original_max_position_embeddings"),
    ({"architectures": "LlamaForCausalLM"}, "architectures must be a list"),
    ({"eos_token_id": ["</s>"]}, r"eos_token_ids\[0\] must be a token id"),
    ({"bos_token_id": 1.5}, "bos_token_id must be a token id"),
])
def test_hf_fields_of_the_wrong_type_or_size_are_refused_naming_the_field(fields, words):
    with pytest.raises(InvalidRequest, match=words):
        ModelArgs.from_hf_config({**HF, **fields})


def test_old_conversions_negative_token_ids_mean_none():
    args = ModelArgs.from_hf_config({**HF, "pad_token_id": -1, "bos_token_id": -1,
                                     "eos_token_id": [2, -1]})
    assert (args.pad_token_id, args.bos_token_id, args.eos_token_ids) == (None, None, (2,))


@pytest.mark.parametrize("data", [[], {"model": []}, {"model": {}, "mapping": [1]},
                                  {"model": {}, "quant": "W8A16"}])
def test_a_kiln_config_of_the_wrong_shape_is_refused(data):
    with pytest.raises(InvalidRequest, match="config.json"):
        EngineConfig.from_dict(json.loads(json.dumps(data)))
