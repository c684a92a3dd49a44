"""What every benchmark here records beside its figures: where it ran from, and on which commit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (str(REPO), str(REPO / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)


def git_commit() -> str:
    """The short HEAD commit, marked when the engine has uncommitted changes."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "runtime_service"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()
    return done.stdout.strip() + ("+uncommitted runtime_service changes" if dirty else "")
