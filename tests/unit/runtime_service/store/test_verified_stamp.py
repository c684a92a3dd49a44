"""An engine verified once is not hashed again until one of its files or its manifest changes."""

import json
import os

import pytest

import runtime_service.store.verified_stamp as stamp
from runtime_service.errors import CorruptEngine
from runtime_service.format.engine_format import build_manifest, write_manifest
from runtime_service.store import pull_engine


@pytest.fixture
def engine(tmp_path):
    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "kiln-engine"}))
    (folder / "rank0.safetensors").write_bytes(os.urandom(200_000))
    write_manifest(folder, build_manifest(folder, "ef" * 32, "test"))
    return folder


@pytest.fixture
def hashes(monkeypatch):
    """Counts full sha256 checks."""
    calls = []
    real = stamp.verify_engine_folder
    monkeypatch.setattr(stamp, "verify_engine_folder", lambda f: calls.append(f) or real(f))
    return calls


def test_second_pull_of_an_unchanged_engine_skips_hashing(engine, tmp_path, hashes):
    pull_engine(engine, tmp_path / "cache")
    pull_engine(engine, tmp_path / "cache")
    assert len(hashes) == 1


def test_a_rewritten_file_is_hashed_again_and_refused(engine, tmp_path, hashes):
    pull_engine(engine, tmp_path / "cache")
    data = bytearray((engine / "rank0.safetensors").read_bytes())
    data[1000] ^= 0xFF
    (engine / "rank0.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptEngine, match="sha256"):
        pull_engine(engine, tmp_path / "cache")
    assert len(hashes) == 2


def test_a_new_manifest_is_hashed_again(engine, tmp_path, hashes):
    pull_engine(engine, tmp_path / "cache")
    (engine / "extra.json").write_text("{}")
    write_manifest(engine, build_manifest(engine, "ef" * 32, "test"))
    pull_engine(engine, tmp_path / "cache")
    assert len(hashes) == 2


def test_another_cache_dir_verifies_on_its_own(engine, tmp_path, hashes):
    pull_engine(engine, tmp_path / "cache-a")
    pull_engine(engine, tmp_path / "cache-b")
    assert len(hashes) == 2


def test_a_damaged_stamp_only_costs_a_full_check(engine, tmp_path, hashes):
    pull_engine(engine, tmp_path / "cache")
    stamp.stamp_path(tmp_path / "cache", engine).write_text("not json")
    pull_engine(engine, tmp_path / "cache")
    pull_engine(engine, tmp_path / "cache")
    assert len(hashes) == 2


def test_an_unwritable_cache_still_verifies(engine, tmp_path, hashes):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    pull_engine(engine, blocker)
    pull_engine(engine, blocker)
    assert len(hashes) == 2
