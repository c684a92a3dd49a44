"""Folders that appear whole or not at all: filled under a `.partial-` name, then renamed.

Engine pulls, mirrored sources and assembled uploads all land this way, so a crash leaves only
a `.partial-` folder (never a half-written one under the final name) and two writers racing for
the same target both end with a complete folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PARTIAL_MARK = ".partial-"


def fill_then_rename(target: Path, fill: Callable[[Path], None],
                     finished: Callable[[Path], bool] = Path.is_dir) -> Path:
    """Runs `fill(folder)` on a fresh folder beside `target`, then renames it to `target`.
    If another writer renamed first, its folder stands when `finished(target)` holds;
    otherwise the rename's error is raised. The partial folder never outlives the call."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_MARK}{target.name}-", dir=target.parent))
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
