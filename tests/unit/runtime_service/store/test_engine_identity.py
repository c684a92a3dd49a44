"""A pull serves only the engine its URI names: the manifest's key must match the URI, a cached
entry is tied to one exact manifest, unservable manifests are refused, and partial folders left
by a killed pull are removed on the next one (issue 15, defects 2 and 5)."""

import json
import subprocess
import sys

import pytest

from runtime_service.errors import CorruptEngine, FailedPrecondition
from runtime_service.format.engine_format import Manifest, build_manifest, write_manifest
from runtime_service.store import LocalStore
from runtime_service.store.atomic_folder import PARTIAL_MARK, remove_abandoned_partials
from runtime_service.store.pull import key_named_by, pull_from_store

GENUINE = "ab" * 32


def make_engine(folder, key=GENUINE, weights=b"genuine weights"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"format": "kiln-engine"}))
    (folder / "rank0.safetensors").write_bytes(weights)
    write_manifest(folder, build_manifest(folder, key, "test"))
    return folder


def published(tmp_path, name, **engine):
    store = LocalStore(tmp_path / name)
    uri = store.publish_engine(make_engine(tmp_path / f"{name}-built", **engine))
    return LocalStore(uri), uri


def rewrite_manifest(store_root, **changes):
    path = store_root / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_the_uri_names_the_key_it_serves():
    assert key_named_by(f"s3://bucket/prefix/engines/{GENUINE}") == GENUINE
    assert key_named_by(f"s3://bucket/engines/{GENUINE}/") == GENUINE
    assert key_named_by("s3://bucket/some/engine") is None


def test_an_engine_claiming_another_key_than_its_uri_names_is_refused(tmp_path):
    crafted, uri = published(tmp_path, "evil", weights=b"crafted weights")
    other_key = "cd" * 32
    with pytest.raises(CorruptEngine, match="claims key"):
        pull_from_store(crafted, other_key, tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("cd*"))


def test_a_crafted_engine_with_the_same_key_never_fills_the_genuine_entry(tmp_path):
    crafted, _ = published(tmp_path, "evil", weights=b"crafted weights")
    genuine, _ = published(tmp_path, "good", weights=b"genuine weights")
    cache = tmp_path / "cache"
    poisoned = pull_from_store(crafted, GENUINE, cache)
    served = pull_from_store(genuine, GENUINE, cache)
    assert served != poisoned
    assert (served / "rank0.safetensors").read_bytes() == b"genuine weights"
    assert pull_from_store(genuine, GENUINE, cache) == served          # reused, not re-pulled


def test_a_manifest_with_no_files_is_refused(tmp_path):
    store, _ = published(tmp_path, "empty")
    rewrite_manifest(store.root, files=[])
    with pytest.raises(CorruptEngine, match="not config.json"):
        pull_from_store(store, GENUINE, tmp_path / "cache")


def test_a_manifest_of_an_unknown_format_version_is_refused(tmp_path):
    store, _ = published(tmp_path, "future")
    rewrite_manifest(store.root, format_version=2)
    with pytest.raises(FailedPrecondition, match="format version 2"):
        pull_from_store(store, GENUINE, tmp_path / "cache")


def test_unservable_manifests_are_refused_in_place_too():
    manifest = Manifest(engine_key=GENUINE, builder_version="t", files=())
    with pytest.raises(CorruptEngine):
        manifest.check_servable()


def test_partials_of_a_killed_pull_are_removed_and_a_live_ones_kept(tmp_path):
    cache = tmp_path / "cache"
    abandoned = cache / f"{PARTIAL_MARK}{GENUINE}-dead"
    abandoned.mkdir(parents=True)
    (abandoned / "rank0.safetensors").write_bytes(b"x" * 1000)
    live = cache / f"{PARTIAL_MARK}{GENUINE}-live"
    live.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(live)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert remove_abandoned_partials(cache) == 1000
        assert not abandoned.exists() and live.is_dir()
    finally:
        holder.stdin.close()
        holder.wait(10)
    store, _ = published(tmp_path, "good")
    pull_from_store(store, GENUINE, cache)
    assert not live.exists()            # its writer is gone now: the pull swept it


def test_the_partial_folder_of_a_sigkilled_pull_is_removed(tmp_path):
    cache = tmp_path / "cache"
    puller = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from runtime_service.store.atomic_folder import fill_then_rename\n"
        "def fill(folder):\n"
        "    (folder / 'rank0.safetensors').write_bytes(b'w' * 1_000_000)\n"
        "    print('filling', flush=True)\n"
        "    time.sleep(60)\n"
        f"fill_then_rename(Path({str(cache / GENUINE)!r}), fill)\n")],
        stdout=subprocess.PIPE, text=True)
    assert puller.stdout.readline().strip() == "filling"
    puller.kill()
    puller.wait(10)
    assert [p.name.startswith(PARTIAL_MARK) for p in cache.iterdir()] == [True]
    assert remove_abandoned_partials(cache) == 1_000_000
    assert list(cache.iterdir()) == []
