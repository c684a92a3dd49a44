"""examples/run_examples.py fits the HLAPI examples' settings to the model it is given: the
tensor-parallel size to its KV heads, the int4 group to its widths (Kiln refuses a group that
does not divide them), both from an HF folder or a Kiln engine's config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))

import run_examples  # noqa: E402

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64}
LLAMA3 = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
          "num_key_value_heads": 8}


def folder(tmp_path: Path, name: str, config: dict) -> str:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    return str(tmp_path / name)


def test_int4_group_is_128_unless_a_width_needs_a_smaller_one(tmp_path):
    assert run_examples.int4_group_size(folder(tmp_path, "llama", LLAMA3)) == 128
    assert run_examples.int4_group_size(folder(tmp_path, "smol", SMOLLM2)) == 64
    odd = {**LLAMA3, "intermediate_size": 14336 + 32}
    assert run_examples.int4_group_size(folder(tmp_path, "odd", odd)) == 32
    engine = {"model": {"hidden_size": 576, "intermediate_size": 1536, "num_heads": 9,
                        "num_kv_heads": 3, "head_dim": 64}}
    assert run_examples.int4_group_size(folder(tmp_path, "engine", engine)) == 64
    assert run_examples.tensor_parallel_size(folder(tmp_path, "tp", SMOLLM2)) == 3
