"""Compiled GPU kernels kept with the pod's other start-up results.

Triton compiles each kernel the first time a process launches it and keeps the result in its
cache folder (TRITON_CACHE_DIR, ~/.triton/cache by default). A pod points that folder into its
own cache directory, `<cache_dir>/kernels/triton`, unless the variable is already set (the Helm
chart's `runtime.kernelCacheHostPath` sets it to a host path), so a restart reuses what it
compiled. On a fresh node compiling is most of an 8B start: 11.7 s of graph capture and 23.7 s
of tuning, against 2.0 s and none with the kernels at hand (bench/NOTES.md, run 15c).

With `--share-startup-cache` the folder also travels through the store, as the tuning records
do (startup_cache.py): after its warm-up a pod packs the kernels into one archive beside the
engine (`startup/<gpu>-kernels-<triton version>.tar.gz`, written only if absent), and a pod whose
folder holds no kernels unpacks it before anything compiles, so a second node skips compiling.
Triton's group files name their kernels' files by absolute path on the node that compiled them;
unpacking points them into this node's folder, or Triton would find nothing and compile again.

What is shared and what is trusted. The archive holds GPU code (cubins) that pods will run, so
sharing is opt-in and trusts the store as a pod trusts the engine's own files there. Host code
never travels: Triton's compiled launchers (`.so`) stay out and each node builds its own.
Unpacking takes only regular files at `<hash>/<name>` paths of plain characters, within
MAX_FILES files and MAX_BYTES bytes, and anything else refuses the whole archive (the pod then
compiles as if there were none).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from runtime_service.format.json_input import parse_json_object

from runtime_service.server.startup_cache import STORE_FOLDER, gpu_file_name

log = logging.getLogger("kiln.startup")

ENV = "TRITON_CACHE_DIR"
MAX_FILES = 50_000
MAX_BYTES = 1 << 30
_MEMBER = re.compile(r"[A-Za-z0-9_-]{1,128}/[A-Za-z0-9_.-]{1,200}")
_HOST_CODE = (".so", ".dll", ".dylib")
# How long a stopping process waits for its kernels to finish packing (`finish_sharing`): a
# fresh node's 760 kernel files packed in 2.6 s (bench/NOTES.md, run 17f), and the chart leaves
# a stopping pod 15 s beyond its drain.
SHARE_WAIT_S = 10.0
_sharing: list[threading.Thread] = []


class KernelArchiveError(ValueError):
    """An archive that is not a plain set of compiled kernels within the limits."""


def pod_kernel_folder(cache_dir: Path) -> Path:
    """Points Triton's cache into the pod's cache directory unless TRITON_CACHE_DIR is set;
    returns the folder in use. Call before the first kernel compiles."""
    if not os.environ.get(ENV):
        os.environ[ENV] = str(Path(cache_dir).resolve() / "kernels" / "triton")
    return Path(os.environ[ENV])


def triton_folder() -> Path:
    """The folder Triton keeps compiled kernels in for this process."""
    return Path(os.environ.get(ENV) or Path.home() / ".triton" / "cache")


def pack(folder: Path) -> tuple[bytes, int]:
    """(gzip tar of the kernels in `folder`, files packed): `<hash>/<name>` files, launchers
    and Triton's unfinished temporary files left out. A folder past the limits that `unpack`
    keeps is refused here too, so nothing that every pod would refuse is ever shared."""
    buffer = io.BytesIO()
    count = total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(Path(folder).glob("*/*")):
            name = path.relative_to(folder).as_posix()
            if (not path.is_file() or path.is_symlink() or not _MEMBER.fullmatch(name)
                    or path.suffix in _HOST_CODE or path.name.startswith("tmp.")):
                continue
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            count, total = count + 1, total + info.size
            if count > MAX_FILES or total > MAX_BYTES:
                raise KernelArchiveError(f"{folder} holds over {MAX_FILES} kernel files or "
                                         f"{MAX_BYTES} bytes")
            info.mode = 0o644
            with open(path, "rb") as handle:
                archive.addfile(info, handle)
    return buffer.getvalue(), count


def unpack(data: bytes, folder: Path) -> int:
    """Writes the archive's kernels into `folder` (each file atomically); returns how many.
    Checks every member first, so a refused archive writes nothing."""
    members = []
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive:
                if not member.isreg() or not _MEMBER.fullmatch(member.name):
                    raise KernelArchiveError(f"unexpected archive member {member.name!r}")
                if Path(member.name).suffix in _HOST_CODE:
                    raise KernelArchiveError(f"host code in a kernel archive: {member.name!r}")
                total += member.size
                if len(members) >= MAX_FILES or total > MAX_BYTES:
                    raise KernelArchiveError(f"over {MAX_FILES} files or {MAX_BYTES} bytes")
                members.append((member.name, archive.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise KernelArchiveError(f"not a readable kernel archive: {exc}") from exc
    names = {name for name, _ in members}
    members = [(name, _local_group(name, content, Path(folder), names))
               for name, content in members]
    for name, content in members:
        target = Path(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".kiln-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return len(members)


def _local_group(name: str, content: bytes, folder: Path, names: set[str]) -> bytes:
    """`content` itself, or for a Triton group file (`<hash>/__grp__<kernel>.json`) the same
    group pointing into `folder`. Triton writes its children's absolute paths, which are the
    packing node's: left as they are, every kernel misses on a fresh node and compiles again
    (found in run 18). Children must be files of the same `<hash>/` folder in the archive."""
    hash_dir, _, file_name = name.partition("/")
    if not file_name.startswith("__grp__"):
        return content
    try:
        children = parse_json_object(content, f"group file {name!r}")["child_paths"]
        local = {child: str(folder.resolve() / hash_dir / child) for child in children}
    except (ValueError, KeyError, TypeError) as exc:
        raise KernelArchiveError(f"unreadable group file {name!r}: {exc!r}") from exc
    stray = [child for child in local if f"{hash_dir}/{child}" not in names
             or not _MEMBER.fullmatch(f"{hash_dir}/{child}")]
    if stray:
        raise KernelArchiveError(f"group file {name!r} names files not beside it: {stray[:3]}")
    return json.dumps({"child_paths": local}).encode()


def host_launchers() -> frozenset[str]:
    """The host launchers (`<hash>/<name>.so`) in this process's Triton folder: C code each node
    compiles for itself, since none travels. Empty when no folder is set."""
    folder = os.environ.get(ENV)
    if not folder:
        return frozenset()
    return frozenset(p.relative_to(folder).as_posix() for p in Path(folder).glob("*/*.so"))


class CompileWatch:
    """Counts the kernels Triton compiles while installed, by name (its compilation listener
    hears every compile and every cache hit). A file count cannot tell: a kernel that misses
    the cache compiles into the very paths an unpacked archive filled, so no file is new.
    Does nothing without Triton."""

    def __init__(self):
        self.compiled: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._knobs = self._previous = None

    def __enter__(self) -> "CompileWatch":
        try:
            from triton import knobs
        except ImportError:
            return self
        self._knobs, self._previous = knobs, knobs.compilation.listener
        knobs.compilation.listener = self._heard
        return self

    def __exit__(self, *exc) -> None:
        if self._knobs is not None:
            self._knobs.compilation.listener = self._previous

    def _heard(self, src, metadata, metadata_group, times, cache_hit) -> None:
        if self._previous is not None:
            self._previous(src=src, metadata=metadata, metadata_group=metadata_group,
                           times=times, cache_hit=cache_hit)
        if not cache_hit:
            with self._lock:
                self.compiled[str(metadata.get("name", "?"))] += 1

    @property
    def count(self) -> int:
        return sum(self.compiled.values())

    def describe(self) -> str:
        """The compiled kernels' names with counts, most compiled first."""
        return ", ".join(f"{name} x{count}" for name, count in self.compiled.most_common())


def holds_kernels(folder: Path) -> bool:
    return any(Path(folder).glob("*/*.json"))


@dataclass(frozen=True)
class SharedKernels:
    """The kernel folder of a pod that shares it through `store` (the engine's Store)."""

    folder: Path
    store: object
    gpu_model: str
    triton_version: str

    @property
    def store_key(self) -> str:
        gpu = gpu_file_name(self.gpu_model).removesuffix(".json")
        version = re.sub(r"[^A-Za-z0-9.]+", "-", self.triton_version)
        return f"{STORE_FOLDER}/{gpu}-kernels-triton-{version}.tar.gz"

    def restore(self) -> int:
        """Unpacks the store's archive into an empty folder; returns the files written (0 when
        the folder already holds kernels, or the store has no usable archive)."""
        if holds_kernels(self.folder):
            return 0
        try:
            data = self.store.read_bytes(self.store_key)
        except Exception as exc:  # noqa: BLE001 - a store without the archive is not a failure
            log.warning("cannot read the shared kernels %s: %r", self.store_key, exc)
            return 0
        if data is None:
            return 0
        try:
            count = unpack(data, self.folder)
        except KernelArchiveError as exc:
            log.warning("ignoring the shared kernels %s: %s", self.store_key, exc)
            return 0
        log.info("took %d compiled kernel files from the store (%s)", count, self.store_key)
        return count

    def share(self) -> bool:
        """Puts this folder's kernels beside the engine unless an archive is there already."""
        try:
            if self.store.stat(self.store_key) is not None:
                return False
            data, count = pack(self.folder)
            if not count:
                return False
            written = self.store.put_bytes_if_absent(self.store_key, data)
        except Exception as exc:  # noqa: BLE001 - sharing is best effort; the pod serves on
            log.warning("cannot share the compiled kernels at %s: %r", self.store_key, exc)
            return False
        if written:
            log.info("shared %d compiled kernel files (%d bytes) at %s", count, len(data),
                     self.store_key)
        return written


def share_in_background(kernels: SharedKernels) -> threading.Thread:
    """Starts `kernels.share()` on a thread: packing takes seconds and the pod serves meanwhile.
    `finish_sharing` waits for it when the process stops."""
    thread = threading.Thread(target=kernels.share, name="kiln-share-kernels", daemon=True)
    _sharing.append(thread)
    thread.start()
    return thread


def finish_sharing(timeout_s: float = SHARE_WAIT_S) -> bool:
    """Waits, at most `timeout_s` in all, for the shares this process started; True if none is
    left running. A pod stopped soon after it started (a rollout, a benchmark) would otherwise
    kill its packing thread, and no pod after it would find the kernels: a pod that did not
    compile shares too, but only a pod that lives long enough (bench/NOTES.md, run 17)."""
    deadline = time.monotonic() + timeout_s
    for thread in list(_sharing):
        thread.join(max(0.0, deadline - time.monotonic()))
    running = [thread for thread in _sharing if thread.is_alive()]
    _sharing[:] = running
    if running:
        log.warning("stopping before the compiled kernels were shared; a later pod shares them")
    return not running
