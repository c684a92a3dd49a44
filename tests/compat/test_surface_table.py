"""tools/hlapi_surface.py finds every name of the peer's table at its kiln path, in the peer's
positional order (the check the report's table comes from)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_surface_table_has_no_mismatch():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "hlapi_surface.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 mismatches" in done.stdout
