"""sha256 of an engine file, whole and by parts, and checking a file against its manifest entry.

Why parts: sha256 is one serial stream. A 16 GB rank file hashes at about 1.3 GB/s on one
core (12.4 s of an 8B engine's 32 s first start on the H200, bench/NOTES.md run 13), while the
host has 16 cores idle. The manifest therefore also lists the sha256 of each PART_BYTES slice of
a file, and a runtime checks those on every core at once. Matching every part of a file of the
listed size is matching its bytes, so a file is checked by its parts when it has them, and by its
whole digest otherwise (manifests written before parts existed). The whole digest stays in the
manifest: pulls hash it as the bytes arrive, and older runtimes read only it.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PART_BYTES = 256 << 20
# Bounds on a manifest's part size: a tiny one would make a hostile manifest's list of parts, and
# the work of checking it, as large as the file.
MIN_PART_BYTES = 64 << 10
MAX_PART_BYTES = 16 << 30
READ_BYTES = 4 << 20


def sha256_file(path: Path, chunk_bytes: int = READ_BYTES) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_range(path: Path, offset: int, length: int) -> str:
    """sha256 of `length` bytes of the file from `offset` (fewer if the file ends first)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        while length > 0 and (chunk := handle.read(min(READ_BYTES, length))):
            digest.update(chunk)
            length -= len(chunk)
    return digest.hexdigest()


def num_parts(size_bytes: int, part_bytes: int) -> int:
    return -(-size_bytes // part_bytes)


def _hash_workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def file_digests(path: Path, part_bytes: int = PART_BYTES) -> tuple[str, tuple[str, ...]]:
    """The file's whole sha256 and its parts', hashed at once on several threads (hashlib and
    file reads let go of the GIL), so the whole digest's serial pass bounds the time."""
    size = path.stat().st_size
    with ThreadPoolExecutor(_hash_workers()) as pool:
        whole = pool.submit(sha256_file, path)
        parts = [pool.submit(sha256_range, path, index * part_bytes, part_bytes)
                 for index in range(num_parts(size, part_bytes))]
        return whole.result(), tuple(part.result() for part in parts)


def matches_parts(path: Path, part_bytes: int, part_sha256: tuple[str, ...]) -> bool:
    """Whether every part of the file has its listed sha256, the parts hashed on all cores."""
    with ThreadPoolExecutor(_hash_workers()) as pool:
        digests = pool.map(lambda index: sha256_range(path, index * part_bytes, part_bytes),
                           range(len(part_sha256)))
        return all(got == want for got, want in zip(digests, part_sha256))
