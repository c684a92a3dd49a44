"""The mapped safetensors reader: the same tensors as the safetensors library, and typed errors for
damaged files."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime_service.errors import InvalidRequest
from runtime_service.model.weights_file import read_tensors


@pytest.fixture
def weights(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(4, 2).to(torch.bfloat16), "empty": torch.zeros(0, 3)}
    path = tmp_path / "rank0.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def test_reads_every_tensor_bit_for_bit(weights):
    expected = load_file(str(weights))
    got = dict(read_tensors(weights))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape
        assert torch.equal(got[name], tensor)


def test_cast_applies_to_every_tensor(weights):
    got = dict(read_tensors(weights, dtype=torch.float16))
    assert {t.dtype for t in got.values()} == {torch.float16}
    assert torch.equal(got["a"], load_file(str(weights))["a"].half())


def test_writing_a_tensor_never_changes_the_file(weights):
    before = weights.read_bytes()
    tensor = dict(read_tensors(weights))["a"]
    tensor.fill_(42.0)
    assert weights.read_bytes() == before
    assert not torch.equal(dict(read_tensors(weights))["a"], tensor)


def _write_raw(path, header: dict, body: bytes):
    data = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data + body)


@pytest.mark.parametrize("header, body, words", [
    ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 16"),
    ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "spans"),
    ({"x": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "malformed"),
    ({"x": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, "negative"),
    ({"x": {"shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "malformed"),
])
def test_damaged_header_entries_are_invalid_requests(tmp_path, header, body, words):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, body)
    with pytest.raises(InvalidRequest, match=words):
        dict(read_tensors(path))


@pytest.mark.parametrize("raw, words", [
    (b"\1\0", "shorter than 8 bytes"),
    (struct.pack("<Q", 1 << 40) + b"{}", "does not fit"),
    (struct.pack("<Q", 3) + b"{x}", "header is not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "header must hold a JSON object"),
    (struct.pack("<Q", 20000) + b"[" * 10000 + b"]" * 10000, "nested too deeply"),
])
def test_damaged_files_are_invalid_requests(tmp_path, raw, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(InvalidRequest, match=words):
        dict(read_tensors(path))
