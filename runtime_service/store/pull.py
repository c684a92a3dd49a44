"""Opening a store by URI, and pulling a verified engine from one into the local cache."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import urlparse

from runtime_service.errors import CorruptEngine, EngineNotFound, InvalidRequest
from runtime_service.format.engine_format import MANIFEST, Manifest, detect_model_kind
from runtime_service.store.atomic_folder import fill_then_rename, remove_abandoned_partials
from runtime_service.store.base import (ENGINE_KEY, ProgressFn, S3Settings, Store,
                                        check_engine_key)
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

    A local engine is verified in place. A remote one is pulled into the cache (see
    `pull_from_store`). A folder verified before and unchanged since is not hashed again
    (verified_stamp.py).
    """
    uri = str(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        if not (folder / MANIFEST).is_file():
            raise EngineNotFound(f"no complete engine at {folder} (no {MANIFEST})")
        verify_once(folder, Path(cache_dir))
        return folder
    return pull_from_store(open_store(uri, settings), key_named_by(uri), cache_dir, progress,
                           num_workers)


def key_named_by(uri: str) -> str | None:
    """The engine key a URI names (its last part, as in `engines/<key>`), or None."""
    last = urlparse(str(uri)).path.rstrip("/").rsplit("/", 1)[-1]
    return last if ENGINE_KEY.match(last) else None


def cache_entry_name(manifest_bytes: bytes, engine_key: str) -> str:
    """`<engine_key>.<16 hex of the manifest's sha256>`: an entry can only ever hold files that
    match this exact manifest, so an engine that merely claims a key never fills (or shadows)
    the entry of the genuine engine with that key."""
    return f"{engine_key}.{hashlib.sha256(manifest_bytes).hexdigest()[:16]}"


def pull_from_store(source: Store, expected_key: str | None, cache_dir: str | Path,
                    progress: ProgressFn | None = None, num_workers: int = 16) -> Path:
    """Pulls the engine at the root of `source` into `cache_dir/<cache_entry_name>`.

    The manifest must name the key the URI asked for (`expected_key`), be servable (a known
    format version, files listed), and every file is verified while it downloads into a
    `.partial-` folder that is renamed into place only when complete. A cached entry is reused
    when it still verifies; partial folders left by a killed pull are removed first.
    """
    data = source.read_bytes(MANIFEST)
    if data is None:
        raise EngineNotFound(f"no complete engine at {source.uri} (no {MANIFEST})")
    manifest = Manifest.from_json(data.decode()).check_servable()
    key = check_engine_key(manifest.engine_key)
    if expected_key is not None and key != expected_key:
        raise CorruptEngine(f"the engine at {source.uri} claims key {key[:12]}, but its URI "
                            f"names {expected_key[:12]}; refusing it")
    cache_dir = Path(cache_dir)
    remove_abandoned_partials(cache_dir)
    target = cache_dir / cache_entry_name(data, key)
    if (target / MANIFEST).is_file():
        try:
            if (target / MANIFEST).read_bytes() == data:
                verify_once(target, cache_dir)
                return target
        except CorruptEngine:
            pass
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
