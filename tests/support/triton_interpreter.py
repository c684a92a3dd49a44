"""Runs a snippet under Triton's interpreter (TRITON_INTERPRET=1) in a child process: kernels
then execute on the CPU in float32, which checks their index arithmetic, masks and splits where
no GPU is. The interpreter is chosen when kernels are defined, so it needs a fresh process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="needs Triton (its interpreter)")


def run_on_interpreter(code: str, timeout_s: float = 300) -> str:
    """The snippet's stdout; fails the test with its stderr if it exits non-zero."""
    # the snippet imports Kiln from the repository root and test helpers from tests/support
    paths = [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
