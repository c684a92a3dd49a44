"""Verified ranged downloads: ranges finishing in any order still hash in file order, a bad
byte fails the pull without leaving the window stuck, and at most `window` ranges wait in memory."""

import os
import random
import threading
import time

import pytest

from runtime_service.errors import CorruptEngine
from runtime_service.format.engine_format import Manifest, build_manifest
from runtime_service.store import LocalStore
from runtime_service.store.download import download_verified

CHUNK = 64 << 10


def make_files(folder, sizes):
    folder.mkdir(parents=True)
    for index, size in enumerate(sizes):
        (folder / f"rank{index}.safetensors").write_bytes(os.urandom(size))
    return build_manifest(folder, "cd" * 32, "test")


class ShuffledStore(LocalStore):
    """Ranges come back after random delays, so they finish out of order; counts how many
    ranges have been read and not yet released by the pull (read but unhashed)."""

    def __init__(self, root, seed=0, corrupt_offset=None):
        super().__init__(root)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.corrupt_offset = corrupt_offset
        self.reads = 0

    def read_range(self, key, offset, length):
        with self.lock:
            delay = self.random.random() * 0.004
            self.reads += 1
        time.sleep(delay)
        data = bytearray(super().read_range(key, offset, length))
        if self.corrupt_offset is not None and key == "rank1.safetensors" \
                and offset <= self.corrupt_offset < offset + length:
            data[self.corrupt_offset - offset] ^= 0xFF
        return bytes(data)


def test_out_of_order_ranges_of_several_files_verify(tmp_path):
    manifest = make_files(tmp_path / "src", (CHUNK * 7 + 5, CHUNK * 3, 0, 11))
    download_verified(ShuffledStore(tmp_path / "src"), manifest, tmp_path / "dst", num_workers=6,
                      chunk_bytes=CHUNK)
    for entry in manifest.files:
        assert (tmp_path / "dst" / entry.path).read_bytes() == \
            (tmp_path / "src" / entry.path).read_bytes()


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_a_bad_byte_fails_the_pull_and_never_hangs(tmp_path, workers):
    manifest = make_files(tmp_path / "src", (CHUNK * 4, CHUNK * 9 + 3, CHUNK * 4))
    store = ShuffledStore(tmp_path / "src", corrupt_offset=CHUNK * 5 + 17)
    done = []

    def pull():
        try:
            download_verified(store, manifest, tmp_path / "dst", num_workers=workers,
                              chunk_bytes=CHUNK)
        except CorruptEngine as exc:
            done.append(exc)

    thread = threading.Thread(target=pull, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the pull hung after a failed sha256"
    assert len(done) == 1 and "rank1.safetensors fails its sha256" in str(done[0])


def test_progress_reaches_the_total(tmp_path):
    manifest = make_files(tmp_path / "src", (CHUNK * 3 + 1, 7))
    seen = []
    download_verified(ShuffledStore(tmp_path / "src"), manifest, tmp_path / "dst",
                      progress=lambda done, total, _: seen.append((done, total)),
                      num_workers=3, chunk_bytes=CHUNK)
    total = sum(entry.size_bytes for entry in manifest.files)
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_manifest_with_a_wrong_size_is_refused_before_reading(tmp_path):
    manifest = make_files(tmp_path / "src", (100,))
    entry = manifest.files[0]
    wrong = Manifest.from_json(manifest.to_json().replace(f'"size_bytes": {entry.size_bytes}',
                                                          f'"size_bytes": {entry.size_bytes + 1}'))
    store = ShuffledStore(tmp_path / "src")
    with pytest.raises(CorruptEngine, match="manifest says"):
        download_verified(store, wrong, tmp_path / "dst", chunk_bytes=CHUNK)
    assert store.reads == 0


def test_a_file_listed_by_parts_is_checked_part_by_part(tmp_path):
    """Parts of 2 ranges each: every part hashes on its own, and a bad byte names its part."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "rank0.safetensors").write_bytes(os.urandom(CHUNK * 7 + 5))
    (folder / "rank1.safetensors").write_bytes(os.urandom(CHUNK * 5))
    manifest = build_manifest(folder, "cd" * 32, "test", part_bytes=2 * CHUNK)
    assert [len(e.part_sha256) for e in manifest.files] == [4, 3]
    download_verified(ShuffledStore(folder), manifest, tmp_path / "dst", num_workers=4,
                      chunk_bytes=CHUNK)
    for entry in manifest.files:
        assert (tmp_path / "dst" / entry.path).read_bytes() == (folder / entry.path).read_bytes()
    with pytest.raises(CorruptEngine, match=r"rank1.safetensors fails its sha256 check \(part 1\)"):
        download_verified(ShuffledStore(folder, corrupt_offset=CHUNK * 3 + 9), manifest,
                          tmp_path / "dst2", num_workers=4, chunk_bytes=CHUNK)


def test_parts_that_ranges_do_not_tile_are_checked_whole(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "rank0.safetensors").write_bytes(os.urandom(CHUNK * 3))
    (folder / "rank1.safetensors").write_bytes(os.urandom(CHUNK * 3))
    manifest = build_manifest(folder, "cd" * 32, "test", part_bytes=CHUNK + (CHUNK // 2))
    with pytest.raises(CorruptEngine, match=r"rank1.safetensors fails its sha256 check$"):
        download_verified(ShuffledStore(folder, corrupt_offset=CHUNK * 2), manifest,
                          tmp_path / "dst", num_workers=3, chunk_bytes=CHUNK)
