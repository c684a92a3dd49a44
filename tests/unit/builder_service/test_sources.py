import os

import pytest

from builder_service.sources import SourceResolver, is_source_file
from runtime_service.errors import EngineNotFound, InvalidRequest, PermissionDenied


def test_a_path_outside_the_allowed_roots_is_permission_denied(tmp_path, tiny_hf):
    resolver = SourceResolver(tmp_path / "work", [tmp_path / "models"])
    with pytest.raises(PermissionDenied, match="allowed roots"):
        resolver.resolve(str(tiny_hf))
    with pytest.raises(PermissionDenied):
        resolver.resolve(str(tmp_path / "models" / ".." / "elsewhere"))


def test_a_server_without_roots_accepts_no_local_paths(tmp_path, tiny_hf):
    with pytest.raises(PermissionDenied):
        SourceResolver(tmp_path / "work", []).resolve(f"file://{tiny_hf}")


def test_a_path_under_an_allowed_root_resolves(tmp_path, tiny_hf):
    resolved = SourceResolver(tmp_path / "work", [tiny_hf.parent]).resolve(str(tiny_hf))
    assert resolved.kind == "hf" and resolved.config.model.num_layers == 2


def test_a_symlink_escaping_the_root_is_refused(tmp_path, tiny_hf):
    root = tmp_path / "models"
    model = root / "m"
    model.mkdir(parents=True)
    for name in os.listdir(tiny_hf):
        os.symlink(tiny_hf / name, model / name)
    resolver = SourceResolver(tmp_path / "work", [root])
    with pytest.raises(PermissionDenied):
        resolved = resolver.resolve(str(model))
        resolver.digest(resolved)


@pytest.mark.parametrize("uri", ["http://host/model", "gs://bucket/model", "hf://meta/llama"])
def test_non_s3_uri_schemes_are_invalid(tmp_path, uri):
    with pytest.raises(InvalidRequest, match="scheme"):
        SourceResolver(tmp_path / "work", None).resolve(uri)


def test_missing_folder_and_unknown_upload_are_not_found(tmp_path):
    resolver = SourceResolver(tmp_path / "work", None)
    with pytest.raises(EngineNotFound):
        resolver.resolve(str(tmp_path / "nope"))
    with pytest.raises(EngineNotFound):
        resolver.resolve("upload://" + "0" * 64)
    with pytest.raises(InvalidRequest):
        resolver.resolve("upload://../../etc")


def test_digest_is_stable_and_follows_weight_content(tmp_path, tiny_hf):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(tiny_hf, copy)
    resolver = SourceResolver(tmp_path / "work", None)
    first = resolver.digest(resolver.resolve(str(copy)))
    assert resolver.digest(resolver.resolve(str(tiny_hf))) == first
    (copy / "extra.bin").write_bytes(b"pickles are ignored")
    assert resolver.digest(resolver.resolve(str(copy))) == first
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert resolver.digest(resolver.resolve(str(copy))) != first


@pytest.mark.parametrize("path,expected", [
    ("config.json", True), ("model-00001-of-00002.safetensors", True),
    ("tokenizer.json", True), ("tokenizer/tokenizer.json", True), ("pytorch_model.bin", False),
    ("model.pt", False), ("README.md", False), ("sub/model.safetensors", False),
])
def test_only_the_files_a_build_reads_are_source_files(path, expected):
    assert is_source_file(path) is expected
