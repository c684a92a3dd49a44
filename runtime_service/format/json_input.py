"""JSON that Kiln did not write itself (a user's config.json, a store's manifest, a calibration
line, a safetensors header): every way it can be malformed is one InvalidRequest naming where
it came from, never a Python error from inside the parser.

Why a module: json's C parser recurses once per nesting level, so a few kilobytes of brackets
raise RecursionError, which no `except json.JSONDecodeError` catches; bytes that are not
UTF-8 raise UnicodeDecodeError before parsing starts; and valid JSON of the wrong shape (a list
where an object belongs) fails later with an AttributeError far from the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime_service.errors import InvalidRequest

MAX_JSON_FILE_BYTES = 16 << 20     # config.json and manifests are kilobytes; tokenizers are not read here


def parse_json(data: bytes | str, what: str):
    """The JSON value in `data`, or InvalidRequest naming `what`."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise InvalidRequest(f"{what} is not valid JSON: nested too deeply") from exc
    except ValueError as exc:          # JSONDecodeError and UnicodeDecodeError both are
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from exc


def parse_json_object(data: bytes | str, what: str) -> dict:
    """Like `parse_json`, for a document that must be one JSON object."""
    value = parse_json(data, what)
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must hold a JSON object, not {type(value).__name__}")
    return value


def read_json_object(path: Path, what: str | None = None,
                     max_bytes: int = MAX_JSON_FILE_BYTES) -> dict:
    """The JSON object in the file at `path`; a missing, unreadable, oversized or malformed
    file is InvalidRequest naming it."""
    what = what or str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidRequest(f"{what} is {size} bytes; at most {max_bytes} are read")
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {what}: {exc}") from exc
    return parse_json_object(data, what)
