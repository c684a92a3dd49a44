"""Engine format v1 on a local folder: telling model folders apart, config, manifest, rank files.

```
config.json          EngineConfig (model, quant, mapping; engines add build and target)
rank{r}.safetensors  rank r's weights
tokenizer/           tokenizer files, chat template, generation_config.json
manifest.json        engines only, written last: format, version, every file's sha256 and size,
                     and the sha256 of each 256 MiB part of it (format/file_digest.py says why)
```
An engine folder without a manifest is incomplete and is treated as absent.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from runtime_service.format.json_input import parse_json_object, read_json_object
from runtime_service.format.engine_config import EngineConfig
from runtime_service.format.file_digest import (MAX_PART_BYTES, MIN_PART_BYTES, PART_BYTES,
                                                file_digests, matches_parts, num_parts,
                                                sha256_file)
from runtime_service.errors import CorruptEngine, EngineNotFound, FailedPrecondition, InvalidRequest

FORMAT_NAME = "kiln-engine"
CHECKPOINT_FORMAT_NAME = "kiln-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.json"
TOKENIZER_DIR = "tokenizer"


def rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


def detect_model_kind(folder: str | Path) -> str:
    """'engine', 'checkpoint' or 'hf', from the folder's files; raises for anything else."""
    folder = Path(folder)
    config_path = folder / CONFIG
    if not folder.is_dir() or not config_path.is_file():
        raise EngineNotFound(f"{folder} is not a model folder (no config.json)")
    config = read_json_object(config_path)
    kind = config.get("format")
    if kind == FORMAT_NAME:
        if not (folder / MANIFEST).is_file():
            raise EngineNotFound(f"engine at {folder} is incomplete (no {MANIFEST})")
        return "engine"
    if kind == CHECKPOINT_FORMAT_NAME:
        return "checkpoint"
    if "model_type" in config or "architectures" in config:
        return "hf"
    raise InvalidRequest(f"{folder} holds neither an HF model, a Kiln checkpoint nor an engine")


def read_engine_config(folder: str | Path) -> EngineConfig:
    config = EngineConfig.from_dict(read_json_object(Path(folder) / CONFIG))
    if config.format_version > FORMAT_VERSION:
        raise InvalidRequest(
            f"{folder} uses format version {config.format_version}; this runtime reads up to "
            f"{FORMAT_VERSION}")
    return config


_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size_bytes: int
    # The sha256 of each `part_bytes` slice, in order (the last may be shorter); none in
    # manifests written before parts existed, whose files are checked whole.
    part_bytes: int = 0
    part_sha256: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {"path": self.path, "sha256": self.sha256, "size_bytes": self.size_bytes}
        if self.part_sha256:
            out |= {"part_bytes": self.part_bytes, "part_sha256": list(self.part_sha256)}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "FileEntry":
        parts = data.get("part_sha256")
        entry = cls(data["path"], data["sha256"], int(data["size_bytes"]),
                    int(data.get("part_bytes", 0)) if parts is not None else 0,
                    tuple(parts) if parts is not None else ())
        entry.check()
        return entry

    def check(self) -> None:
        """Refuses an entry whose digests cannot describe its file: a size below zero, a digest
        that is not 64 hex digits, or parts that do not cover exactly `size_bytes` bytes."""
        if self.size_bytes < 0:
            raise CorruptEngine(f"manifest entry {self.path!r} has a negative size")
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise CorruptEngine(f"manifest entry {self.path!r} has no valid sha256")
        if not self.part_sha256:
            return
        if not MIN_PART_BYTES <= self.part_bytes <= MAX_PART_BYTES:
            raise CorruptEngine(f"manifest entry {self.path!r} has part_bytes {self.part_bytes}; "
                                f"expected {MIN_PART_BYTES}..{MAX_PART_BYTES}")
        if len(self.part_sha256) != num_parts(self.size_bytes, self.part_bytes):
            raise CorruptEngine(f"manifest entry {self.path!r} lists {len(self.part_sha256)} "
                                f"parts for {self.size_bytes} bytes in parts of "
                                f"{self.part_bytes}")
        if not all(isinstance(d, str) and _SHA256.fullmatch(d) for d in self.part_sha256):
            raise CorruptEngine(f"manifest entry {self.path!r} has a part digest that is not "
                                f"64 hex digits")

    def matches(self, path: Path) -> bool:
        """Whether the file at `path` (already of the right size) has these digests: by its
        parts on every core when listed, else by its whole sha256."""
        if self.part_sha256:
            return matches_parts(path, self.part_bytes, self.part_sha256)
        return sha256_file(path) == self.sha256


@dataclass(frozen=True)
class Manifest:
    engine_key: str
    builder_version: str
    files: tuple[FileEntry, ...]
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps({
            "format": self.format,
            "format_version": self.format_version,
            "engine_key": self.engine_key,
            "builder_version": self.builder_version,
            "files": [f.to_dict() for f in self.files],
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            data = parse_json_object(text, "the manifest")
            files = tuple(FileEntry.from_dict(f) for f in data["files"])
            manifest = cls(engine_key=data["engine_key"], builder_version=data["builder_version"],
                           files=files, format=data["format"],
                           format_version=data["format_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptEngine(f"manifest is malformed: {exc}") from exc
        for entry in manifest.files:
            check_relative_path(entry.path)
        return manifest

    def check_servable(self) -> "Manifest":
        """Refuses a manifest this runtime must not serve: another format, a version it does not
        know (its files may mean something else), or no files at all (nothing would be verified,
        so anything in the folder would be served)."""
        if self.format != FORMAT_NAME:
            raise CorruptEngine(f"manifest format is {self.format!r}, not {FORMAT_NAME!r}")
        if self.format_version != FORMAT_VERSION:
            raise FailedPrecondition(
                f"the engine uses format version {self.format_version!r}; this runtime reads "
                f"version {FORMAT_VERSION}; rebuild the engine with this version's builder")
        paths = {entry.path for entry in self.files}
        if CONFIG not in paths:
            raise CorruptEngine(f"the manifest lists {len(paths)} files and not {CONFIG}; an "
                                f"engine's manifest lists every file it holds")
        return self


def check_relative_path(path: str) -> str:
    """Refuses absolute paths, '..' and empty parts in a path stored in a manifest or a key."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise InvalidRequest(f"unsafe relative path {path!r}")
    return path


def list_engine_files(folder: Path) -> list[str]:
    """Relative paths of every file but the manifest, sorted, '/'-separated."""
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            rel = (Path(root) / name).relative_to(folder).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def build_manifest(folder: str | Path, engine_key: str, builder_version: str,
                   part_bytes: int = PART_BYTES) -> Manifest:
    folder = Path(folder)
    entries = []
    for rel in list_engine_files(folder):
        whole, parts = file_digests(folder / rel, part_bytes)
        entries.append(FileEntry(rel, whole, (folder / rel).stat().st_size, part_bytes, parts))
    return Manifest(engine_key=engine_key, builder_version=builder_version, files=tuple(entries))


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Writes the manifest atomically (temp file + rename): its presence means complete."""
    folder = Path(folder)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, folder / MANIFEST)


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise EngineNotFound(f"no {MANIFEST} in {folder}")
    return Manifest.from_json(path.read_text())


def verify_engine_folder(folder: str | Path) -> Manifest:
    """Checks the manifest is servable and every entry's size and sha256; raises CorruptEngine on
    any mismatch (FailedPrecondition for an unknown format version)."""
    folder = Path(folder)
    manifest = read_manifest(folder).check_servable()
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file():
            raise CorruptEngine(f"engine file {entry.path} is missing")
        if path.stat().st_size != entry.size_bytes:
            raise CorruptEngine(f"engine file {entry.path} has the wrong size")
        if not entry.matches(path):
            raise CorruptEngine(f"engine file {entry.path} fails its sha256 check")
    return manifest
