"""Turning a build's `source` into a local folder the pipeline can read, and its digest.

A source is a local path or file:// URI (only under the allowed roots, symlinks resolved), an
`s3://bucket/prefix` (mirrored into the work folder; an engine there is pulled and verified), or
`upload://<id>` from UploadSource. Any other scheme is refused. Only the files a build reads are
fetched and hashed: config, safetensors weights, tokenizer files; pickled weights never are.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from runtime_service.store.atomic_folder import fill_then_rename
from runtime_service.format.engine_config import EngineConfig
from runtime_service.format.engine_format import CONFIG, MANIFEST, TOKENIZER_DIR, detect_model_kind
from runtime_service.format.file_digest import sha256_file
from runtime_service.errors import EngineNotFound, InvalidRequest, PermissionDenied
from runtime_service.model.loader import config_for_folder
from runtime_service.store import ProgressFn, S3Settings, open_store, pull_engine

from builder_service.engine_key import canonical_json, source_digest
from builder_service.uploads import UPLOAD_SCHEME, UploadArea

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")
_SOURCE_PATTERNS = (CONFIG, MANIFEST, "*.safetensors", *TOKENIZER_FILES, f"{TOKENIZER_DIR}/*")


def is_source_file(relative_path: str) -> bool:
    """Whether a build reads this file of a source folder (everything else is ignored)."""
    parts = relative_path.split("/")
    return any(len(parts) == len(pattern.split("/"))
               and all(map(fnmatch.fnmatchcase, parts, pattern.split("/")))
               for pattern in _SOURCE_PATTERNS)


@dataclass(frozen=True)
class ResolvedSource:
    origin: str          # the source as requested
    folder: Path         # a local folder holding it
    kind: str            # "hf", "checkpoint" or "engine"
    config: EngineConfig


class DigestCache:
    """sha256 of files keyed by (real path, size, mtime), so a rebuild does not rehash weights."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self._entries = {}

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        with self._lock:
            if key in self._entries:
                return self._entries[key]
        digest = sha256_file(file)
        with self._lock:
            self._entries[key] = digest
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._entries))
            os.replace(tmp, self.path)
        return digest


class SourceResolver:
    def __init__(self, work_dir: Path, allowed_roots: list[Path] | None = None,
                 s3_settings: S3Settings | None = None, uploads: UploadArea | None = None):
        """allowed_roots None means any local path (the batch CLI); [] means none (a server
        without --allowed-root accepts only uploads and s3:// sources)."""
        self.work_dir = Path(work_dir)
        self.allowed_roots = (None if allowed_roots is None
                              else [Path(root).resolve() for root in allowed_roots])
        self.s3_settings = s3_settings
        self.uploads = uploads or UploadArea(self.work_dir / "uploads")
        (self.work_dir / "sources").mkdir(parents=True, exist_ok=True)
        self.digests = DigestCache(self.work_dir / "digests.json")

    def resolve(self, source: str, pulled: ProgressFn | None = None) -> ResolvedSource:
        """`pulled(done_bytes, total_bytes, message)` follows the copy of an s3:// source."""
        parsed = urlparse(source)
        if source.startswith(f"{UPLOAD_SCHEME}://"):
            folder = self.uploads.source_folder(source[len(UPLOAD_SCHEME) + 3:])
        elif parsed.scheme == "s3":
            folder = self._mirror_s3(source, pulled)
        elif parsed.scheme in ("", "file"):
            folder = self._local(parsed.path if parsed.scheme == "file" else source)
        else:
            raise InvalidRequest(
                f"unsupported source scheme {parsed.scheme!r} in {source!r}; use a path, "
                f"file://, s3:// or {UPLOAD_SCHEME}://")
        kind = detect_model_kind(folder)
        try:
            _, config = config_for_folder(folder)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidRequest):
                raise
            raise InvalidRequest(f"config.json of {source} is missing or has a bad field: {exc}")
        return ResolvedSource(source, folder, kind, config)

    def files(self, resolved: ResolvedSource) -> list[str]:
        """The source's files a build reads, each checked to stay inside the allowed roots."""
        out = []
        for root, _, names in os.walk(resolved.folder):
            for name in names:
                path = Path(root) / name
                rel = path.relative_to(resolved.folder).as_posix()
                if is_source_file(rel) and rel != MANIFEST:
                    self._check_allowed(path.resolve(), resolved.origin)
                    out.append(rel)
        return sorted(out)

    def digest(self, resolved: ResolvedSource) -> str:
        return source_digest((rel, self.digests.sha256(resolved.folder / rel))
                             for rel in self.files(resolved))

    def check_local_file(self, uri: str) -> None:
        """PermissionDenied for a local path (or file://) outside the allowed roots; other
        schemes pass (calibration data is read from the builder's disk or S3 only)."""
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            self._check_allowed(Path(parsed.path if parsed.scheme else uri).resolve(), uri)

    def _check_allowed(self, path: Path, origin: str) -> None:
        if self.allowed_roots is None or path.is_relative_to(self.work_dir.resolve()):
            return
        if not any(path.is_relative_to(root) for root in self.allowed_roots):
            raise PermissionDenied(
                f"{origin} is outside the builder's allowed roots; upload it or start the "
                f"builder with --allowed-root")

    def _local(self, path: str) -> Path:
        folder = Path(path).resolve()
        self._check_allowed(folder, path)
        if not folder.is_dir():
            raise EngineNotFound(f"source folder {path} does not exist")
        return folder

    def _mirror_s3(self, uri: str, pulled: ProgressFn | None) -> Path:
        """A local copy of the source prefix; an engine is pulled with full verification."""
        store = open_store(uri, self.s3_settings)
        objects = [info for info in store.list_objects("") if is_source_file(info.key)]
        if not objects:
            raise EngineNotFound(f"no model files under {uri}")
        if any(info.key == MANIFEST for info in objects):
            return pull_engine(uri, self.work_dir / "sources" / "engines", self.s3_settings,
                               progress=pulled)
        listing = canonical_json([uri, [(info.key, info.size_bytes, info.etag) for info in objects]])
        target = self.work_dir / "sources" / f"s3-{hashlib.sha256(listing).hexdigest()}"
        if target.is_dir():
            return target

        def fill(partial: Path) -> None:
            done, total = 0, sum(info.size_bytes for info in objects)
            for info in objects:
                dest = partial / info.key
                dest.parent.mkdir(parents=True, exist_ok=True)
                store.get_file(info.key, dest)
                done += info.size_bytes
                if pulled is not None:
                    pulled(done, total, info.key)

        return fill_then_rename(target, fill)
