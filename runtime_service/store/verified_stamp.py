"""Verifying an engine folder once per change, not once per start.

Re-hashing a 16 GB engine costs seconds of every pod start. After a full check (or a verified
pull) the folder gets a stamp in the pod's cache directory: the manifest's sha256 and each
file's size, mtime, ctime and inode. A later start whose files all still match skips the sha256
pass; any rewrite, touch, replacement or a new manifest falls back to the full check, which
writes a new stamp. The stamp catches accidents (a partial copy, a file replaced in place), not a
person who can write the cache directory: they could rewrite the stamp as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from runtime_service.format.engine_format import MANIFEST, read_manifest, verify_engine_folder

log = logging.getLogger("kiln.store")

STAMP_DIR = ".verified"


def stamp_path(cache_dir: Path, folder: Path) -> Path:
    name = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:32]
    return Path(cache_dir) / STAMP_DIR / f"{name}.json"


def _fingerprint(folder: Path) -> dict:
    folder = Path(folder)
    manifest_bytes = (folder / MANIFEST).read_bytes()
    files = {}
    for entry in read_manifest(folder).files:
        st = (folder / entry.path).stat()
        files[entry.path] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return {"folder": str(folder.resolve()),
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "files": files}


def matches(cache_dir: Path, folder: Path) -> bool:
    """True when `folder` is unchanged since its stamp was written."""
    path = stamp_path(cache_dir, folder)
    try:
        return json.loads(path.read_bytes()) == _fingerprint(folder)
    except (OSError, ValueError):
        return False


def record(cache_dir: Path, folder: Path) -> None:
    """Stamps `folder` as verified as it is now; a cache directory that cannot be written only
    means the next start verifies again."""
    path = stamp_path(cache_dir, folder)
    try:
        data = json.dumps(_fingerprint(folder), sort_keys=True).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stamp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot stamp %s as verified: %r", folder, exc)


def verify_once(folder: Path, cache_dir: Path) -> None:
    """verify_engine_folder, skipped when the folder's stamp still matches it."""
    if matches(cache_dir, folder):
        return
    verify_engine_folder(folder)
    record(cache_dir, folder)
