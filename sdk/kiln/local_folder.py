"""What the SDK reads from a model folder on this machine before asking any service: its
config.json and manifest.json, leniently. A missing or malformed file is None here, never an
exception in the caller's process: the builder reads the same folder and says what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_BYTES = 16 << 20


def json_object(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing, too large, or not one."""
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def folder_config(model_dir: str) -> dict | None:
    return json_object(Path(model_dir) / "config.json")


def folder_mapping(model_dir: str) -> tuple[int, int] | None:
    """(tp_size, pp_size) of a Kiln checkpoint or engine folder, None when it has no readable
    split."""
    mapping = (folder_config(model_dir) or {}).get("mapping") or {}
    if not isinstance(mapping, dict):
        return None
    tp, pp = mapping.get("tp_size", 1), mapping.get("pp_size", 1)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (tp, pp)):
        return None
    return tp, pp
