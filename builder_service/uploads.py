"""Content-addressed source uploads: blobs by sha256, folders assembled from them.

A client sends the folder's file list, asks which blobs are missing and streams only those, so a
second upload of the same files sends nothing. Every blob is verified against its sha256 before it
becomes visible, every path is a safe relative path, and totals are capped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from runtime_service.store.atomic_folder import fill_then_rename
from runtime_service.format.engine_format import check_relative_path
from runtime_service.errors import CapacityExceeded, EngineNotFound, InvalidRequest

UPLOAD_SCHEME = "upload"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
FILE_LIST = "files.json"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class UploadLimits:
    max_total_bytes: int = 1 << 40
    max_files: int = 10_000
    max_chunk_bytes: int = 4 << 20

    def __post_init__(self):
        for name in ("max_total_bytes", "max_files", "max_chunk_bytes"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"upload limit {name} must be >= 1")


@dataclass(frozen=True)
class SourceFileEntry:
    path: str
    sha256: str
    size_bytes: int


MAX_NAME_BYTES = 255           # one path component, as most file systems allow
MAX_PATH_BYTES = 1024


def check_upload_path(path: str) -> str:
    """A relative path the builder can create on any common file system, or InvalidRequest."""
    check_relative_path(path)
    if "\x00" in path:
        raise InvalidRequest(f"file path {path!r} holds a NUL byte")
    encoded = path.encode("utf-8", errors="surrogatepass")
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidRequest(f"file path {path[:40]!r}... is longer than {MAX_PATH_BYTES} bytes")
    if any(len(part.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES
           for part in path.split("/")):
        raise InvalidRequest(f"a name in {path[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    return path


def check_file_list(files: list[SourceFileEntry], limits: UploadLimits) -> None:
    if not files:
        raise InvalidRequest("an upload needs at least one file")
    if len(files) > limits.max_files:
        raise CapacityExceeded(f"an upload holds at most {limits.max_files} files")
    seen = set()
    for entry in files:
        check_upload_path(entry.path)
        if entry.path in seen:
            raise InvalidRequest(f"file {entry.path} is listed twice")
        seen.add(entry.path)
    folders = {"/".join(parts[:i]) for parts in (p.split("/") for p in seen)
               for i in range(1, len(parts))}
    clash = sorted(seen & folders)
    if clash:
        raise InvalidRequest(f"{clash[0]!r} is listed as a file and as a folder of other files")
        if not SHA256_HEX.match(entry.sha256):
            raise InvalidRequest(f"file {entry.path} has a malformed sha256")
        if entry.size_bytes < 0:
            raise InvalidRequest(f"file {entry.path} has a negative size")
    total = sum(entry.size_bytes for entry in files)
    if total > limits.max_total_bytes:
        raise CapacityExceeded(
            f"upload of {total} bytes exceeds the builder's limit of {limits.max_total_bytes}")


def source_id(files: list[SourceFileEntry]) -> str:
    listing = sorted((e.path, e.sha256, e.size_bytes) for e in files)
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


class BlobWriter:
    """Receives one blob's chunks in order; `finish` verifies and publishes it atomically."""

    def __init__(self, area: "UploadArea", sha256: str, size_bytes: int):
        self.area, self.sha256, self.size_bytes = area, sha256, size_bytes
        self.tmp = area.tmp_dir / f"{sha256}.{uuid.uuid4().hex}"
        self.handle = open(self.tmp, "wb")
        self.hasher = hashlib.sha256()
        self.written = 0

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.written:
            raise InvalidRequest(f"blob {self.sha256[:12]} chunk at offset {offset}, expected "
                                 f"{self.written}")
        if self.written + len(data) > self.size_bytes:
            raise InvalidRequest(f"blob {self.sha256[:12]} is longer than its listed size")
        self.handle.write(data)
        self.hasher.update(data)
        self.written += len(data)

    @property
    def complete(self) -> bool:
        return self.written == self.size_bytes

    def finish(self) -> None:
        self.handle.close()
        try:
            if self.hasher.hexdigest() != self.sha256:
                raise InvalidRequest(f"blob {self.sha256[:12]} does not match its sha256")
            os.replace(self.tmp, self.area.blob_path(self.sha256))
        finally:
            self.tmp.unlink(missing_ok=True)

    def abandon(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


class UploadArea:
    """blobs/<sha256> and sources/<source_id>/ (hard links to blobs) under the builder's work dir."""

    def __init__(self, root: Path, limits: UploadLimits = UploadLimits()):
        self.root = Path(root)
        self.limits = limits
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.source_dir = self.root / "sources"
        for folder in (self.blob_dir, self.tmp_dir, self.source_dir):
            folder.mkdir(parents=True, exist_ok=True)
        empty = self.blob_dir / EMPTY_SHA256  # empty files carry no chunks to upload
        if not empty.is_file():
            empty.write_bytes(b"")

    def blob_path(self, sha256: str) -> Path:
        if not SHA256_HEX.match(sha256 or ""):
            raise InvalidRequest(f"malformed blob sha256 {sha256!r}")
        return self.blob_dir / sha256

    def missing(self, digests: list[str]) -> list[str]:
        if len(digests) > self.limits.max_files:
            raise CapacityExceeded(f"ask for at most {self.limits.max_files} blobs at once")
        return [d for d in dict.fromkeys(digests) if not self.blob_path(d).is_file()]

    def new_blob(self, sha256: str, size_bytes: int) -> BlobWriter:
        self.blob_path(sha256)
        return BlobWriter(self, sha256, size_bytes)

    def assemble(self, files: list[SourceFileEntry]) -> str:
        """Builds sources/<id>/ from present blobs; raises InvalidRequest if one is missing."""
        check_file_list(files, self.limits)
        ident = source_id(files)
        target = self.source_dir / ident
        if target.is_dir():
            return ident
        missing = self.missing([e.sha256 for e in files])
        if missing:
            raise InvalidRequest(f"upload is missing {len(missing)} blob(s), e.g. {missing[0][:12]}")

        def fill(partial: Path) -> None:
            for entry in files:
                dest = partial / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(self.blob_path(entry.sha256), dest)
            (partial / f".{FILE_LIST}").write_text(json.dumps(
                [[e.path, e.sha256, e.size_bytes] for e in files]))

        fill_then_rename(target, fill)
        return ident

    def source_folder(self, ident: str) -> Path:
        if not SHA256_HEX.match(ident or ""):
            raise InvalidRequest(f"malformed upload id {ident!r}")
        folder = self.source_dir / ident
        if not folder.is_dir():
            raise EngineNotFound(f"no uploaded source {ident}")
        return folder
