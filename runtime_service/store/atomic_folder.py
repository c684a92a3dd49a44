"""Folders that appear whole or not at all: filled under a `.partial-` name, then renamed.

Engine pulls, mirrored sources and assembled uploads all land this way, so a crash leaves only
a `.partial-` folder (never a half-written one under the final name) and two writers racing for
the same target both end with a complete folder.

A writer holds an exclusive flock on its partial folder while it fills it, so a partial folder
nobody holds a lock on was left by a writer that died (SIGKILL, OOM, power loss):
`remove_abandoned_partials` deletes exactly those, and never a folder another live process is
filling, even one in another container that shares the directory. A short lock on the parent
folder itself closes the gap between creating a partial folder and locking it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PARTIAL_MARK = ".partial-"

log = logging.getLogger("kiln.store")


@contextlib.contextmanager
def _parent_lock(parent: Path, mode: int):
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _locked_partial(target: Path) -> tuple[Path, int]:
    """A fresh partial folder beside `target` and the fd that holds its lock."""
    with _parent_lock(target.parent, fcntl.LOCK_SH):
        partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_MARK}{target.name}-",
                                        dir=target.parent))
        fd = os.open(partial, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return partial, fd


def fill_then_rename(target: Path, fill: Callable[[Path], None],
                     finished: Callable[[Path], bool] = Path.is_dir) -> Path:
    """Runs `fill(folder)` on a fresh folder beside `target`, then renames it to `target`.
    If another writer renamed first, its folder stands when `finished(target)` holds;
    otherwise the rename's error is raised. The partial folder never outlives the call."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial, fd = _locked_partial(target)
    try:
        fill(partial)
        try:
            os.rename(partial, target)
        except OSError:
            if not finished(target):
                raise
        return target
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        os.close(fd)


def remove_abandoned_partials(parent: Path, target_name: str = "") -> int:
    """Deletes the partial folders under `parent` whose writer is gone (with `target_name`, only
    those of that target); returns the bytes freed."""
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    mark = f"{PARTIAL_MARK}{target_name}-" if target_name else PARTIAL_MARK
    freed = 0
    with _parent_lock(parent, fcntl.LOCK_EX):
        for folder in parent.iterdir():
            if not folder.name.startswith(mark) or not folder.is_dir():
                continue
            fd = os.open(folder, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue                # a live writer holds it
            finally:
                os.close(fd)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            freed += size
            log.info("removed abandoned partial folder %s (%d bytes)", folder, size)
    return freed
