"""Engine format v1 on a local folder: telling model folders apart, config, manifest, rank files.

```
config.json          EngineConfig (model, quant, mapping; engines add build and target)
rank{r}.safetensors  rank r's weights
tokenizer/           tokenizer files, chat template, generation_config.json
manifest.json        engines only, written last: format, version, every file's sha256 and size
```
An engine folder without a manifest is incomplete and is treated as absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from runtime_service.format.engine_config import EngineConfig
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
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{config_path} is not valid JSON: {exc}") from exc
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
    config = EngineConfig.from_dict(json.loads((Path(folder) / CONFIG).read_text()))
    if config.format_version > FORMAT_VERSION:
        raise InvalidRequest(
            f"{folder} uses format version {config.format_version}; this runtime reads up to "
            f"{FORMAT_VERSION}")
    return config


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size_bytes: int


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
            "files": [{"path": f.path, "sha256": f.sha256, "size_bytes": f.size_bytes}
                      for f in self.files],
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            data = json.loads(text)
            files = tuple(FileEntry(f["path"], f["sha256"], int(f["size_bytes"]))
                          for f in data["files"])
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


def build_manifest(folder: str | Path, engine_key: str, builder_version: str) -> Manifest:
    folder = Path(folder)
    entries = tuple(FileEntry(rel, sha256_file(folder / rel), (folder / rel).stat().st_size)
                    for rel in list_engine_files(folder))
    return Manifest(engine_key=engine_key, builder_version=builder_version, files=entries)


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
        if sha256_file(path) != entry.sha256:
            raise CorruptEngine(f"engine file {entry.path} fails its sha256 check")
    return manifest
