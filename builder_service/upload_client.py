"""Client side of the content-addressed upload: hash the folder, ask which blobs the builder lacks,
stream only those. Used by `kiln build --builder` for a local model folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from kiln.v1 import builder_pb2

from runtime_service.format.file_digest import sha256_file
from runtime_service.errors import EngineNotFound

from builder_service.sources import is_source_file

CHUNK_BYTES = 1 << 20


def folder_file_list(folder: Path) -> list[builder_pb2.SourceFile]:
    """The model files of a folder (config, safetensors, tokenizer), hashed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineNotFound(f"source folder {folder} does not exist")
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if is_source_file(rel):
                out.append(builder_pb2.SourceFile(path=rel, sha256=sha256_file(path),
                                                  size_bytes=path.stat().st_size))
    if not out:
        raise EngineNotFound(f"no model files in {folder}")
    return sorted(out, key=lambda f: f.path)


def _chunks(folder: Path, files: list[builder_pb2.SourceFile],
            missing: set[str]) -> Iterator[builder_pb2.SourceChunk]:
    yield builder_pb2.SourceChunk(files=builder_pb2.SourceFileList(files=files))
    sent = set()
    for entry in files:
        if entry.sha256 not in missing or entry.sha256 in sent or entry.size_bytes == 0:
            continue
        sent.add(entry.sha256)
        with open(folder / entry.path, "rb") as handle:
            offset = 0
            while data := handle.read(CHUNK_BYTES):
                yield builder_pb2.SourceChunk(blob=builder_pb2.BlobChunk(
                    sha256=entry.sha256, offset=offset, data=data))
                offset += len(data)


def upload_folder(stub, folder: Path, metadata=None, timeout_s: float | None = None):
    """Uploads a model folder; returns the SourceRef (its `uri` goes into BuildRequest.source)."""
    folder = Path(folder)
    files = folder_file_list(folder)
    reply = stub.FindMissingBlobs(builder_pb2.FindMissingBlobsRequest(
        sha256=sorted({f.sha256 for f in files})), metadata=metadata, timeout=timeout_s)
    return stub.UploadSource(_chunks(folder, files, set(reply.missing)), metadata=metadata,
                             timeout=timeout_s)
