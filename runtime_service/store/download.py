"""Downloading an engine's files as parallel byte ranges, with every sha256 checked on the way.

Workers fetch fixed-size ranges and write them in place (pwrite); this thread hashes the ranges in
file order as they complete, so hashing overlaps the download instead of following it. At most
`window` ranges are in flight, which bounds memory to window x chunk_bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runtime_service.format.engine_format import Manifest
from runtime_service.errors import CorruptEngine

DEFAULT_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class _Range:
    file_index: int
    offset: int
    length: int
    is_last: bool


def _plan(manifest: Manifest, chunk_bytes: int) -> list[_Range]:
    ranges = []
    for index, entry in enumerate(manifest.files):
        offsets = list(range(0, entry.size_bytes, chunk_bytes)) or [0]
        for offset in offsets:
            length = min(chunk_bytes, entry.size_bytes - offset)
            ranges.append(_Range(index, offset, length, offset == offsets[-1]))
    return ranges


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
    fds = []
    for entry in manifest.files:
        path = dest / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, entry.size_bytes)
        fds.append(fd)
    total = sum(entry.size_bytes for entry in manifest.files)
    done = 0
    hashers = [hashlib.sha256() for _ in manifest.files]

    def fetch(item: _Range) -> bytes:
        entry = manifest.files[item.file_index]
        data = source.read_range(entry.path, item.offset, item.length) if item.length else b""
        if len(data) != item.length:
            raise CorruptEngine(f"engine file {entry.path} is shorter than its manifest says")
        os.pwrite(fds[item.file_index], data, item.offset)
        return data

    window = max(2, num_workers * 2)
    pending: deque[tuple[_Range, Future]] = deque()
    ranges = iter(_plan(manifest, chunk_bytes))
    try:
        with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="kiln-pull") as pool:
            try:
                for item in ranges:
                    pending.append((item, pool.submit(fetch, item)))
                    if len(pending) >= window:
                        done += _consume(pending.popleft(), manifest, hashers)
                        if progress:
                            progress(done, total, "pull")
                while pending:
                    done += _consume(pending.popleft(), manifest, hashers)
                    if progress:
                        progress(done, total, "pull")
            except BaseException:
                for _, future in pending:
                    future.cancel()
                raise
    finally:
        for fd in fds:
            os.close(fd)


def _consume(pending_item: tuple[_Range, Future], manifest: Manifest, hashers) -> int:
    item, future = pending_item
    data = future.result()
    hashers[item.file_index].update(data)
    if item.is_last:
        entry = manifest.files[item.file_index]
        if hashers[item.file_index].hexdigest() != entry.sha256:
            raise CorruptEngine(f"engine file {entry.path} fails its sha256 check")
    return len(data)

