"""Where engines live: one Store interface over a local folder or an S3 bucket prefix.

A store holds engines under `engines/<engine_key>/` and human names under `names/<name>`.
Publishing writes every object first and the manifest last, only if absent, so a reader that finds
a manifest finds a complete engine, and an engine without one is treated as absent: an interrupted
publish leaves nothing visible, and the next publish completes it (objects already there with the
right size and sha256 are kept). Pulling reads each file in parallel byte ranges, checks every
sha256 against the manifest and only then moves the folder into the local cache.

This module is the interface; `local.py` and `s3.py` implement it, and `pull.py` opens one by URI.
The S3 store is imported only when an `s3://` URI is opened, so a runtime that serves local
engines needs no minio client.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor, as_completed
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime_service.errors import EngineNotFound, InvalidRequest
from runtime_service.format.engine_format import MANIFEST, Manifest, check_relative_path, read_manifest

ENGINES_PREFIX = "engines"
NAMES_PREFIX = "names"
ENGINE_KEY = re.compile(r"^[0-9a-f]{64}$")
ENGINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# (done_bytes, total_bytes, message): every long transfer reports through one of these.
ProgressFn = Callable[[int, int, str], None]


def check_engine_key(key: str) -> str:
    if not isinstance(key, str) or not ENGINE_KEY.match(key):
        raise InvalidRequest(f"engine key must be 64 lowercase hex characters, got {key!r}")
    return key


def check_engine_name(name: str) -> str:
    if not ENGINE_NAME.match(name or "") or ".." in name:
        raise InvalidRequest(
            f"engine name {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ - and not hold '..'")
    return name


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`, the key exactly as written ('' when absent).

    The URI is split literally, as the AWS CLI does: '?' and '#' are part of the key and nothing
    is normalised, so the object read is the one the user named. Callers check the key; the
    bucket's name is checked where a store is opened (s3.py).
    """
    scheme, sep, rest = str(uri).partition("://")
    bucket, _, key = rest.partition("/")
    if scheme != "s3" or not sep or not bucket:
        raise InvalidRequest(f"expected s3://bucket/key, got {uri!r}")
    return bucket, key


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 service. From flags or KILN_S3_* environment variables."""

    endpoint: str
    access_key: str = ""
    secret_key: str = ""
    secure: bool = False
    region: str = "us-east-1"
    ca_file: str | None = None
    max_connections: int = 32

    def __post_init__(self):
        if not self.endpoint or "/" in self.endpoint:
            raise InvalidRequest(
                f"S3 endpoint must be host:port without a scheme, got {self.endpoint!r}")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise InvalidRequest(f"S3 CA file {self.ca_file} does not exist")
        if self.max_connections < 1:
            raise InvalidRequest("S3 max_connections must be >= 1")

    @classmethod
    def from_env(cls, env: dict | None = None) -> "S3Settings":
        env = os.environ if env is None else env
        endpoint = env.get("KILN_S3_ENDPOINT", "")
        if not endpoint:
            raise InvalidRequest("s3:// URIs need KILN_S3_ENDPOINT (host:port) to be set")
        return cls(endpoint=endpoint,
                   access_key=env.get("KILN_S3_ACCESS_KEY", ""),
                   secret_key=env.get("KILN_S3_SECRET_KEY", ""),
                   secure=env.get("KILN_S3_SECURE", "0").lower() in ("1", "true", "yes"),
                   region=env.get("KILN_S3_REGION", "us-east-1"),
                   ca_file=env.get("KILN_S3_CA_FILE") or None)


@dataclass(frozen=True)
class ObjectInfo:
    key: str                    # relative to the store's root, '/'-separated
    size_bytes: int
    sha256: str | None = None   # as recorded at upload, when the store keeps it
    etag: str | None = None     # changes when the object is rewritten (S3 only)


class Store(ABC):
    """Objects addressed by relative keys under one root, plus the engine operations on them."""

    uri: str

    # -- object primitives, one implementation per backend --------------------------------------

    @abstractmethod
    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every complete object under prefix/ (partial uploads never appear)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        """Uploads a file so that it appears whole or not at all."""

    @abstractmethod
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Writes data unless the key exists; False when it did. Never overwrites."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The whole object, or None when absent."""

    @abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> None:
        """Downloads one object to a local file (the caller renames it into place)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object if present."""

    @abstractmethod
    def child_uri(self, key: str) -> str: ...

    def holds(self, key: str, size_bytes: int, sha256: str) -> bool:
        """Whether the object exists with this size and (as recorded at upload) this sha256."""
        info = self.stat(key)
        return info is not None and info.size_bytes == size_bytes and info.sha256 == sha256

    # -- engines ---------------------------------------------------------------------------------

    def engine_uri(self, engine_key: str) -> str:
        return self.child_uri(f"{ENGINES_PREFIX}/{check_engine_key(engine_key)}")

    def read_engine_manifest(self, engine_key: str) -> Manifest | None:
        """The manifest of a complete engine, or None (an engine without one is absent)."""
        data = self.read_bytes(f"{ENGINES_PREFIX}/{check_engine_key(engine_key)}/{MANIFEST}")
        return Manifest.from_json(data.decode()) if data is not None else None

    def read_engine_file(self, engine_key: str, path: str) -> bytes | None:
        return self.read_bytes(
            f"{ENGINES_PREFIX}/{check_engine_key(engine_key)}/{check_relative_path(path)}")

    def list_engine_keys(self) -> list[str]:
        """Keys of complete engines only."""
        keys = set()
        for info in self.list_objects(ENGINES_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST and ENGINE_KEY.match(parts[1]):
                keys.add(parts[1])
        return sorted(keys)

    def publish_engine(self, folder: Path, progress: ProgressFn | None = None) -> str:
        """Uploads a local engine folder (its manifest already written) and returns its URI.

        Objects go first, the manifest last and only if absent, so concurrent publishers of one
        key never expose a half-written engine and never replace a published one.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        key = check_engine_key(manifest.engine_key)
        prefix = f"{ENGINES_PREFIX}/{key}"
        if self.read_engine_manifest(key) is not None:
            return self.engine_uri(key)
        present = {info.key for info in self.list_objects(prefix)}
        total = sum(entry.size_bytes for entry in manifest.files)
        needed = [entry for entry in manifest.files
                  if not (f"{prefix}/{entry.path}" in present
                          and self.holds(f"{prefix}/{entry.path}", entry.size_bytes, entry.sha256))]
        done = total - sum(entry.size_bytes for entry in needed)
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="kiln-publish") as pool:
            uploads = {pool.submit(self.put_file, f"{prefix}/{entry.path}", folder / entry.path,
                                   entry.sha256): entry for entry in needed}
            for future in as_completed(uploads):
                future.result()
                done += uploads[future].size_bytes
                if progress:
                    progress(done, total, uploads[future].path)
        self.put_bytes_if_absent(f"{prefix}/{MANIFEST}", (folder / MANIFEST).read_bytes())
        return self.engine_uri(key)

    def delete_engine(self, engine_key: str) -> None:
        """Removes the manifest first, so the engine disappears before its files do."""
        prefix = f"{ENGINES_PREFIX}/{check_engine_key(engine_key)}"
        self.delete(f"{prefix}/{MANIFEST}")
        for info in self.list_objects(prefix):
            self.delete(info.key)
        for name, key in self.list_names().items():
            if key == engine_key:
                self.delete(f"{NAMES_PREFIX}/{name}")

    def set_name(self, name: str, engine_key: str) -> None:
        self.put_bytes(f"{NAMES_PREFIX}/{check_engine_name(name)}",
                       check_engine_key(engine_key).encode())

    def list_names(self) -> dict[str, str]:
        names = {}
        for info in self.list_objects(NAMES_PREFIX):
            name = info.key.split("/", 1)[1]
            data = self.read_bytes(info.key)
            if data is not None and ENGINE_KEY.match(data.decode(errors="replace")):
                names[name] = data.decode()
        return names

    def resolve(self, key_or_name: str) -> str:
        """The engine key for a key or a name; raises EngineNotFound when neither is complete."""
        if ENGINE_KEY.match(key_or_name or ""):
            key = key_or_name
        else:
            data = self.read_bytes(f"{NAMES_PREFIX}/{check_engine_name(key_or_name)}")
            if data is None:
                raise EngineNotFound(f"no engine named {key_or_name!r} in {self.uri}")
            key = data.decode()
        if self.read_engine_manifest(key) is None:
            raise EngineNotFound(f"no engine {key_or_name!r} in {self.uri}")
        return key
