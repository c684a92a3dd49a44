"""Engine files are checked by the sha256 of each part on several cores, and a manifest's parts
must describe exactly the file they claim to."""

import hashlib
import json
import os

import pytest

from runtime_service.errors import CorruptEngine
from runtime_service.format import file_digest
from runtime_service.format.engine_format import (CONFIG, MANIFEST, Manifest, build_manifest,
                                                  verify_engine_folder, write_manifest)

PART = file_digest.MIN_PART_BYTES


def engine_folder(tmp_path, weights: bytes):
    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / CONFIG).write_text('{"format": "kiln-engine"}')
    (folder / "rank0.safetensors").write_bytes(weights)
    write_manifest(folder, build_manifest(folder, "key", "test", part_bytes=PART))
    return folder


def entry_of(folder, path="rank0.safetensors"):
    manifest = Manifest.from_json((folder / MANIFEST).read_text())
    return next(e for e in manifest.files if e.path == path)


def rewrite_entry(folder, **fields):
    data = json.loads((folder / MANIFEST).read_text())
    entry = next(f for f in data["files"] if f["path"] == "rank0.safetensors")
    entry.update(fields)
    (folder / MANIFEST).write_text(json.dumps(data))


def test_the_manifest_lists_each_part_and_the_whole_file(tmp_path):
    weights = os.urandom(2 * PART + 123)
    entry = entry_of(engine_folder(tmp_path, weights))
    assert entry.sha256 == hashlib.sha256(weights).hexdigest()
    assert entry.part_bytes == PART
    assert entry.part_sha256 == tuple(hashlib.sha256(weights[i:i + PART]).hexdigest()
                                      for i in range(0, len(weights), PART))
    assert file_digest.file_digests(tmp_path / "engine" / "rank0.safetensors", PART) == \
        (entry.sha256, entry.part_sha256)


@pytest.mark.parametrize("where", [0, PART + 5, 2 * PART + 100])
def test_a_flipped_byte_in_any_part_fails_verification(tmp_path, where):
    weights = bytearray(os.urandom(2 * PART + 123))
    folder = engine_folder(tmp_path, bytes(weights))
    verify_engine_folder(folder)
    weights[where] ^= 1
    (folder / "rank0.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CorruptEngine, match="sha256"):
        verify_engine_folder(folder)


def test_a_manifest_without_parts_is_checked_whole(tmp_path):
    weights = bytearray(os.urandom(PART + 1))
    folder = engine_folder(tmp_path, bytes(weights))
    data = json.loads((folder / MANIFEST).read_text())
    for entry in data["files"]:
        entry.pop("part_bytes", None)
        entry.pop("part_sha256", None)
    (folder / MANIFEST).write_text(json.dumps(data))
    assert not entry_of(folder).part_sha256
    verify_engine_folder(folder)
    weights[-1] ^= 1
    (folder / "rank0.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CorruptEngine, match="sha256"):
        verify_engine_folder(folder)


@pytest.mark.parametrize("fields, message", [
    ({"part_sha256": ["0" * 64]}, "lists 1 parts"),                        # too few parts
    ({"part_bytes": 1}, "part_bytes 1"),                                   # a DoS-sized part
    ({"part_bytes": file_digest.MAX_PART_BYTES + 1}, "part_bytes"),
    ({"part_sha256": ["xyz"] * 3}, "64 hex digits"),
    ({"part_sha256": [1, 2, 3]}, "64 hex digits"),
    ({"sha256": "not-a-digest"}, "no valid sha256"),
    ({"size_bytes": -1}, "negative size"),
])
def test_a_manifest_whose_digests_cannot_describe_the_file_is_refused(tmp_path, fields, message):
    folder = engine_folder(tmp_path, os.urandom(2 * PART + 123))
    rewrite_entry(folder, **fields)
    with pytest.raises(CorruptEngine, match=message):
        verify_engine_folder(folder)


def test_parts_that_match_a_different_file_of_the_same_size_are_refused(tmp_path):
    folder = engine_folder(tmp_path, os.urandom(2 * PART + 123))
    (tmp_path / "other").mkdir()
    other = engine_folder(tmp_path / "other", os.urandom(2 * PART + 123))
    rewrite_entry(folder, part_sha256=list(entry_of(other).part_sha256))
    with pytest.raises(CorruptEngine, match="sha256"):
        verify_engine_folder(folder)
