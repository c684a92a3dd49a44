"""Downloading an engine's files as parallel byte ranges, with every sha256 checked on the way.

Workers fetch fixed-size ranges and write them in place (pwrite). Each digest the manifest
lists is fed its ranges in order by whichever worker holds the next one (a per-digest cursor),
so digests hash in parallel with each other and with the download, on the workers' threads
(hashlib releases the GIL). A file whose manifest entry lists parts (format/file_digest.py) is
checked part by part, so even one large rank file hashes on every worker: a pull costs no more
than the transfer, or than hashing one part. A
byte range stays in memory from its fetch until it is hashed; at most `window` ranges are held,
which bounds memory to window x chunk_bytes. Ranges are started in file order, so the range a
file's hash waits for always holds a slot already and the window can never deadlock.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runtime_service.format.engine_format import Manifest
from runtime_service.errors import CorruptEngine

DEFAULT_CHUNK_BYTES = 8 << 20
_POLL_S = 0.05


@dataclass(frozen=True)
class _Range:
    file_index: int
    digest_index: int   # which _FileDigest checks it
    index: int          # the range's place in that digest's bytes
    offset: int
    length: int


def _plan(manifest: Manifest, chunk_bytes: int) -> tuple[list[_Range], list["_FileDigest"]]:
    """The ranges in file order, and the digests they feed: one per part of a file whose entry
    lists parts that whole ranges tile, else one for the whole file."""
    ranges, digests = [], []
    for file_index, entry in enumerate(manifest.files):
        by_parts = bool(entry.part_sha256) and entry.part_bytes % chunk_bytes == 0
        span = entry.part_bytes if by_parts else max(entry.size_bytes, 1)
        wanted = entry.part_sha256 if by_parts else (entry.sha256,)
        for part, sha256 in enumerate(wanted):
            start = part * span
            end = min(start + span, entry.size_bytes)
            offsets = list(range(start, end, chunk_bytes)) or [start]
            digests.append(_FileDigest(entry.path, sha256, len(offsets),
                                       part if by_parts else None))
            for index, offset in enumerate(offsets):
                ranges.append(_Range(file_index, len(digests) - 1, index, offset,
                                     min(chunk_bytes, end - offset)))
    return ranges, digests


class _FileDigest:
    """One file's sha256, fed its ranges in order. `add` parks a range; the thread that finds
    the next range waiting hashes it (and any that follow) outside the lock, one thread at a
    time. Returns how many ranges that thread hashed, so their window slots can be freed."""

    def __init__(self, path: str, sha256: str, num_ranges: int, part: int | None = None):
        self.path = path
        self.part = part
        self.sha256 = sha256
        self.num_ranges = num_ranges
        self._hasher = hashlib.sha256()
        self._lock = threading.Lock()
        self._parked: dict[int, bytes] = {}
        self._next = 0
        self._hashing = False

    @property
    def complete(self) -> bool:
        return self._next == self.num_ranges

    def add(self, index: int, data: bytes) -> int:
        hashed = 0
        with self._lock:
            self._parked[index] = data
        while True:
            with self._lock:
                if self._hashing or self._next not in self._parked:
                    return hashed
                data = self._parked.pop(self._next)
                self._hashing = True
            try:
                self._hasher.update(data)
            finally:
                with self._lock:
                    self._next += 1
                    self._hashing = False
            hashed += 1
            if self._next == self.num_ranges and self._hasher.hexdigest() != self.sha256:
                where = f" (part {self.part})" if self.part is not None else ""
                raise CorruptEngine(f"engine file {self.path} fails its sha256 check{where}")


def download_verified(source, manifest: Manifest, dest: Path, progress=None, num_workers: int = 8,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
    """Writes every manifest file under dest; raises CorruptEngine on a missing or altered file."""
    sizes = {info.key: info.size_bytes for info in source.list_objects("")}
    for entry in manifest.files:
        if entry.path not in sizes:
            raise CorruptEngine(f"engine file {entry.path} is missing from the store")
        if sizes[entry.path] != entry.size_bytes:
            raise CorruptEngine(
                f"engine file {entry.path} is {sizes[entry.path]} bytes; the manifest says "
                f"{entry.size_bytes}")
    ranges, digests = _plan(manifest, chunk_bytes)
    fds = []
    try:
        for entry in manifest.files:
            path = dest / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.ftruncate(fds[-1], entry.size_bytes)
        _fetch_all(source, manifest, ranges, fds, digests, progress, num_workers)
    finally:
        for fd in fds:
            os.close(fd)


def _fetch_all(source, manifest: Manifest, ranges: list[_Range], fds: list[int],
               digests: list[_FileDigest], progress, num_workers: int) -> None:
    window = threading.Semaphore(max(2, num_workers * 2))
    failed = threading.Event()
    total = sum(entry.size_bytes for entry in manifest.files)

    def fetch(item: _Range) -> int:
        try:
            entry = manifest.files[item.file_index]
            data = source.read_range(entry.path, item.offset, item.length) if item.length else b""
            if len(data) != item.length:
                raise CorruptEngine(f"engine file {entry.path} is shorter than its manifest says")
            os.pwrite(fds[item.file_index], data, item.offset)
            for _ in range(digests[item.digest_index].add(item.index, data)):
                window.release()
            return item.length
        except BaseException:
            failed.set()
            raise

    done = 0
    futures: list[Future] = []
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="kiln-pull") as pool:
        try:
            for item in ranges:
                while not window.acquire(timeout=_POLL_S):
                    if failed.is_set():
                        break
                if failed.is_set():
                    break
                futures.append(pool.submit(fetch, item))
                while futures and futures[0].done():
                    done += futures.pop(0).result()
                    if progress:
                        progress(done, total, "pull")
            for future in futures:
                done += future.result()
                if progress:
                    progress(done, total, "pull")
        except BaseException:
            failed.set()
            for future in futures:
                future.cancel()
            raise
    unhashed = [d.path for d in digests if not d.complete]
    if unhashed:
        raise CorruptEngine(f"engine files {unhashed} were not fully verified")
