"""Opening a store by URI, and pulling a verified engine from one into the local cache."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from runtime_service.errors import CorruptEngine, EngineNotFound, InvalidRequest
from runtime_service.format.engine_format import MANIFEST, Manifest, detect_model_kind
from runtime_service.store.atomic_folder import fill_then_rename
from runtime_service.store.base import ProgressFn, S3Settings, Store, check_engine_key
from runtime_service.store.local import LocalStore
from runtime_service.store.verified_stamp import record, verify_once


def open_store(uri: str | Path, settings: S3Settings | None = None) -> Store:
    """A store for a local path, a file:// URI or s3://bucket/prefix; other schemes are refused."""
    uri = str(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme == "file" else uri)
    if parsed.scheme == "s3":
        from runtime_service.store.s3 import S3Store
        return S3Store.from_uri(uri, settings or S3Settings.from_env())
    raise InvalidRequest(
        f"unsupported store URI scheme {parsed.scheme!r} in {uri!r}; use a path, file:// or s3://")


def pull_engine(uri: str | Path, cache_dir: str | Path, settings: S3Settings | None = None,
                progress: ProgressFn | None = None, num_workers: int = 16) -> Path:
    """A verified local engine folder for `uri` (sha256 of every file checked).

    A local engine is verified in place. A remote one is pulled into `cache_dir/<engine_key>`
    through parallel ranged reads, verified, then renamed into place, so the cache never holds a
    partial engine; a cached copy that still verifies is reused without downloading. A folder
    verified before and unchanged since is not hashed again (verified_stamp.py).
    """
    uri = str(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        if not (folder / MANIFEST).is_file():
            raise EngineNotFound(f"no complete engine at {folder} (no {MANIFEST})")
        verify_once(folder, Path(cache_dir))
        return folder
    source = open_store(uri, settings)
    data = source.read_bytes(MANIFEST)
    if data is None:
        raise EngineNotFound(f"no complete engine at {uri} (no {MANIFEST})")
    manifest = Manifest.from_json(data.decode())
    key = check_engine_key(manifest.engine_key)
    cache_dir = Path(cache_dir)
    target = cache_dir / key
    if (target / MANIFEST).is_file():
        try:
            verify_once(target, cache_dir)
            return target
        except CorruptEngine:
            shutil.rmtree(target)
    elif target.exists():
        shutil.rmtree(target)
    from runtime_service.store.download import download_verified

    def fill(partial: Path) -> None:
        download_verified(source, manifest, partial, progress, num_workers)
        (partial / MANIFEST).write_bytes(data)

    # A rival pull that renamed first counts only if it finished (wrote its manifest).
    folder = fill_then_rename(target, fill, finished=lambda t: (t / MANIFEST).is_file())
    record(cache_dir, folder)           # verified as it arrived: the next start skips hashing
    return folder


def fetch_engine(uri: str, cache_dir: Path, progress=None) -> tuple[Path, str]:
    """A local folder for `uri` and its kind. Engines are pulled and verified (store.pull_engine);
    a local HF folder or checkpoint is served in place, for development."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        if not path.exists():
            raise EngineNotFound(f"no engine or model folder at {path}")
        kind = detect_model_kind(path)
        if kind != "engine":
            return path, kind
    return pull_engine(uri, cache_dir, progress=progress), "engine"
