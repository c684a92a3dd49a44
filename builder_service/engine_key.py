"""Engine keys: the same source and settings always give the same key, anything else another.

Pure functions over digests and settings, no I/O, so they are tested alone. The key is the sha256
of a canonical JSON document (sorted keys, no whitespace) holding the source digest, the build,
quant and parallel settings, the engine format version and the target.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable

from runtime_service.format.engine_config import BuildConfig, Mapping, QuantConfig, Target
from runtime_service.format.engine_format import FORMAT_VERSION, check_relative_path


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def source_digest(files: Iterable[tuple[str, str]]) -> str:
    """Digest of a source folder from (relative path, file sha256) pairs, in any order."""
    entries = sorted((check_relative_path(path), sha) for path, sha in files)
    if not entries:
        raise ValueError("a source digest needs at least one file")
    return hashlib.sha256(canonical_json(entries)).hexdigest()


def engine_key(source: str, build: BuildConfig, quant: QuantConfig, mapping: Mapping,
               target: Target, format_version: int = FORMAT_VERSION) -> str:
    document = {
        "source": source,
        "build": dataclasses.asdict(build),
        "quant": quant.to_dict(),
        "mapping": mapping.to_dict(),
        "target": dataclasses.asdict(target),
        "format_version": format_version,
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()
