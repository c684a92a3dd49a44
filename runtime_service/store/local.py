"""The local-folder store: a directory that holds engines as plain files.

Writes go to a hidden temporary name beside the target and are renamed into place, and the
manifest is linked in only if absent, so the same publish rules hold as on S3.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from runtime_service.format.engine_format import check_relative_path
from runtime_service.format.file_digest import sha256_file
from runtime_service.store.atomic_folder import PARTIAL_MARK
from runtime_service.store.base import ObjectInfo, Store


class LocalStore(Store):
    """A folder on this machine: the embedded default. Writes go through a temp file + rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_relative_path(key)

    def child_uri(self, key: str) -> str:
        return str(self._path(key))

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        out = []
        for root, _, files in os.walk(base):
            for name in files:
                if PARTIAL_MARK in name:
                    continue
                path = Path(root) / name
                out.append(ObjectInfo(path.relative_to(self.root).as_posix(), path.stat().st_size))
        return sorted(out, key=lambda info: info.key)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return ObjectInfo(key, path.stat().st_size) if path.is_file() else None

    def holds(self, key: str, size_bytes: int, sha256: str) -> bool:
        path = self._path(key)
        return (path.is_file() and path.stat().st_size == size_bytes
                and sha256_file(path) == sha256)

    def _temp_beside(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}{PARTIAL_MARK}{uuid.uuid4().hex}")

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        target = self._path(key)
        tmp = self._temp_beside(target)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        tmp = self._temp_beside(target)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        tmp = self._temp_beside(target)
        try:
            tmp.write_bytes(data)
            os.link(tmp, target)  # fails if the target exists: an atomic "create only"
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def read_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with open(self._path(key), "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def get_file(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._path(key), dest)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        parent = self._path(key).parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
