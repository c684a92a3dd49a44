"""The store's promises on a local folder; S3 runs the same code in tests/integration/builder."""

import hashlib
import json
import os

import pytest

from runtime_service.format.engine_format import (Manifest, build_manifest, write_manifest)
from runtime_service.errors import CorruptEngine, EngineNotFound, InvalidRequest
from runtime_service.store import LocalStore, open_store, pull_engine
from runtime_service.store.download import download_verified

KEY = "ab" * 32


def make_engine(folder, key=KEY, sizes=(3_000_000, 10, 0)):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"format": "kiln-engine"}))
    for index, size in enumerate(sizes):
        (folder / f"rank{index}.safetensors").write_bytes(os.urandom(size))
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    manifest = build_manifest(folder, key, "test")
    write_manifest(folder, manifest)
    return folder


class RangeCountingStore(LocalStore):
    def __init__(self, root):
        super().__init__(root)
        self.ranges = []

    def read_range(self, key, offset, length):
        self.ranges.append((key, offset, length))
        return super().read_range(key, offset, length)


def test_publish_then_pull_roundtrips_through_ranged_reads(tmp_path):
    engine = make_engine(tmp_path / "built")
    store = LocalStore(tmp_path / "store")
    uri = store.publish_engine(engine)
    assert store.list_engine_keys() == [KEY]
    remote = RangeCountingStore(uri)
    manifest = Manifest.from_json((engine / "manifest.json").read_text())
    download_verified(remote, manifest, tmp_path / "pulled", num_workers=4, chunk_bytes=1 << 20)
    for entry in manifest.files:
        assert (tmp_path / "pulled" / entry.path).read_bytes() == (engine / entry.path).read_bytes()
    big = [r for r in remote.ranges if r[0] == "rank0.safetensors"]
    assert len(big) == 3 and {r[1] for r in big} == {0, 1 << 20, 2 << 20}


def test_engine_without_manifest_is_absent_and_publish_never_overwrites_one(tmp_path):
    engine = make_engine(tmp_path / "built")
    store = LocalStore(tmp_path / "store")
    store.put_file(f"engines/{KEY}/rank0.safetensors", engine / "rank0.safetensors")
    assert store.list_engine_keys() == [] and store.read_engine_manifest(KEY) is None
    with pytest.raises(EngineNotFound):
        store.resolve(KEY)
    store.publish_engine(engine)
    published = store.read_engine_manifest(KEY)
    assert not store.put_bytes_if_absent(f"engines/{KEY}/manifest.json", b"{}")
    assert store.read_engine_manifest(KEY) == published


def test_partial_objects_are_invisible(tmp_path):
    store = LocalStore(tmp_path)
    (tmp_path / "engines" / KEY).mkdir(parents=True)
    (tmp_path / "engines" / KEY / ".rank0.safetensors.partial-123").write_bytes(b"half")
    assert store.list_objects("engines") == []


def pulled_after(tmp_path, damage):
    engine = make_engine(tmp_path / "built")
    store = LocalStore(tmp_path / "store")
    uri = store.publish_engine(engine)
    damage(tmp_path / "store" / "engines" / KEY)
    manifest = Manifest.from_json((engine / "manifest.json").read_text())
    download_verified(LocalStore(uri), manifest, tmp_path / "pulled", chunk_bytes=1 << 20)


def flip_byte(folder):
    path = folder / "rank0.safetensors"
    data = bytearray(path.read_bytes())
    data[1_500_000] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_refused_on_pull(tmp_path):
    with pytest.raises(CorruptEngine, match="sha256"):
        pulled_after(tmp_path, flip_byte)


def test_a_missing_file_is_refused_on_pull(tmp_path):
    with pytest.raises(CorruptEngine, match="missing"):
        pulled_after(tmp_path, lambda f: (f / "tokenizer" / "tokenizer.json").unlink())


def test_local_pull_verifies_in_place(tmp_path):
    engine = make_engine(tmp_path / "built")
    assert pull_engine(engine, tmp_path / "cache") == engine
    flip_byte(engine)
    with pytest.raises(CorruptEngine):
        pull_engine(f"file://{engine}", tmp_path / "cache")
    with pytest.raises(EngineNotFound):
        pull_engine(tmp_path / "nothing", tmp_path / "cache")


def test_names_and_delete(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.publish_engine(make_engine(tmp_path / "built"))
    store.set_name("llama-tiny", KEY)
    assert store.resolve("llama-tiny") == KEY
    store.delete_engine(KEY)
    assert store.list_engine_keys() == [] and store.list_names() == {}
    assert not (tmp_path / "store" / "engines" / KEY).exists()


@pytest.mark.parametrize("key", ["../x", "engines/../../etc", "/abs", "a//b"])
def test_keys_with_dot_dot_or_absolute_paths_are_refused(tmp_path, key):
    with pytest.raises(InvalidRequest):
        LocalStore(tmp_path).read_bytes(key)


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 200])
def test_bad_engine_names_are_refused(tmp_path, name):
    with pytest.raises(InvalidRequest):
        LocalStore(tmp_path).set_name(name, KEY)


@pytest.mark.parametrize("uri", ["http://x/y", "gs://b/p", "ftp://h/p"])
def test_non_s3_schemes_are_refused(uri):
    with pytest.raises(InvalidRequest, match="scheme"):
        open_store(uri)


def test_manifest_paths_with_dot_dot_are_refused():
    text = json.dumps({"format": "kiln-engine", "format_version": 1, "engine_key": KEY,
                       "builder_version": "x", "files": [
                           {"path": "../../etc/passwd", "sha256": hashlib.sha256().hexdigest(),
                            "size_bytes": 0}]})
    with pytest.raises(InvalidRequest):
        Manifest.from_json(text)
