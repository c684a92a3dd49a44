"""Calibration data for activation-aware quantization: where it comes from, its digest, and the
token windows the model is run on.

`--calib-data` names a text file (used whole) or a JSONL file (one {"text": ...} per line), a
local path or `s3://bucket/key` (read with the builder's S3 settings). Without it the corpus is
one every Python has, the standard library's documentation topics (`pydoc_data.topics`), so a
quantized build needs no download. Only its first three quarters calibrate: the last quarter is
held out, and bench/bench_quant_quality.py measures perplexity there.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from runtime_service.format.engine_format import check_relative_path
from runtime_service.format.json_input import parse_json
from runtime_service.errors import InvalidRequest
from runtime_service.store import S3Settings, open_store, split_s3_uri

DEFAULT_NUM_SAMPLES = 32
DEFAULT_SEQ_LEN = 512
HELD_OUT_FRACTION = 0.25
MAX_CALIB_BYTES = 1 << 30
# AWQ runs every window through each layer at once, in float32: 2^18 tokens of an 8B model's
# MLP activations alone are 15 GB. The default (32 x 512) is 2^14.
MAX_CALIB_TOKENS = 1 << 18


def pydoc_text() -> str:
    """The standard library's documentation topics, joined in their module's order."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics.values())


def split_pydoc() -> tuple[str, str]:
    """(calibration part, held-out last quarter) of `pydoc_text`, cut at a paragraph."""
    text = pydoc_text()
    cut = text.rfind("\n\n", 0, int(len(text) * (1 - HELD_OUT_FRACTION)))
    return text[:cut], text[cut:]


@dataclass(frozen=True)
class CalibrationData:
    """Texts to calibrate on, their sha256, and how many windows of how many tokens to use."""

    texts: tuple[str, ...]
    sha256: str
    num_samples: int = DEFAULT_NUM_SAMPLES
    seq_len: int = DEFAULT_SEQ_LEN

    def __post_init__(self):
        for name in ("num_samples", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65536:
                raise InvalidRequest(f"calibration {name} must be in [1, 65536], got {value!r}")
        if self.num_samples * self.seq_len > MAX_CALIB_TOKENS:
            raise InvalidRequest(
                f"calibration takes at most {MAX_CALIB_TOKENS} tokens (num_samples x seq_len); "
                f"{self.num_samples} x {self.seq_len} is {self.num_samples * self.seq_len}")
        if not any(t.strip() for t in self.texts):
            raise InvalidRequest("the calibration data holds no text")

    def windows(self, tokenizer) -> list[list[int]]:
        """Up to num_samples consecutive windows of seq_len token ids over the joined texts
        (fewer when the text is short; at least one, possibly shorter than seq_len). Only as
        much text is tokenized as the windows need: the windows are the same as the whole
        text's, and a gigabyte of text costs a gigabyte's copy, not hours of tokenizing."""
        text, need = "\n\n".join(self.texts), self.num_samples * self.seq_len
        chars = need * 8
        while True:
            part = _prefix_at_whitespace(text, chars)
            ids = tokenizer(part, add_special_tokens=False)["input_ids"]
            if len(ids) > need or len(part) == len(text):
                break
            chars *= 4
        if not ids:
            raise InvalidRequest("the calibration data tokenizes to nothing")
        count = max(1, min(self.num_samples, len(ids) // self.seq_len))
        return [ids[i * self.seq_len:(i + 1) * self.seq_len] for i in range(count)]


def _prefix_at_whitespace(text: str, chars: int) -> str:
    """`text` cut at the last whitespace before `chars` (all of it when shorter), so no word
    is split and the tokens before the cut are the whole text's."""
    if len(text) <= chars:
        return text
    cut = max(text.rfind(space, 0, chars) for space in (" ", "\n", "\t"))
    return text[:cut if cut > 0 else chars]


def parse_texts(raw: bytes, name: str) -> tuple[str, ...]:
    """A .jsonl file's "text" fields, or any other file's whole text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"calibration file {name} is not UTF-8 text: {exc}") from exc
    if not name.endswith(".jsonl"):
        return (text,)
    texts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{name} line {number}")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InvalidRequest(f"{name} line {number} needs a string field \"text\"")
        texts.append(record["text"])
    return tuple(texts)


def _read_s3(uri: str, s3_settings: S3Settings | None) -> bytes:
    """The object `uri` names, its key exactly as written: a key with empty, '.' or '..' parts
    is refused rather than normalised into another object's."""
    bucket, key = split_s3_uri(uri)
    try:
        check_relative_path(key)
    except InvalidRequest as exc:
        raise InvalidRequest(f"calibration data {uri} must be s3://bucket/key with a key of "
                             f"non-empty parts, none of them '.' or '..'") from exc
    store = open_store(f"s3://{bucket}", s3_settings)
    info = store.stat(key)
    if info is None:
        raise InvalidRequest(f"calibration data {uri} does not exist")
    if info.size_bytes > MAX_CALIB_BYTES:
        raise InvalidRequest(f"calibration data {uri} is larger than {MAX_CALIB_BYTES} bytes")
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "calib"
        store.get_file(key, dest)
        return dest.read_bytes()


def _read(uri: str, s3_settings: S3Settings | None) -> bytes:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return _read_s3(uri, s3_settings)
    if parsed.scheme not in ("", "file"):
        raise InvalidRequest(f"calibration data must be a path or s3:// URI, got {uri!r}")
    path = Path(parsed.path if parsed.scheme == "file" else uri)
    if not path.is_file():
        raise InvalidRequest(f"calibration file {uri} "
                             + ("is not a regular file" if path.exists() else "does not exist"))
    if path.stat().st_size > MAX_CALIB_BYTES:
        raise InvalidRequest(f"calibration file {uri} is larger than {MAX_CALIB_BYTES} bytes")
    return path.read_bytes()


def load_calibration(uri: str = "", num_samples: int = 0, seq_len: int = 0,
                     s3_settings: S3Settings | None = None) -> CalibrationData:
    """The calibration set a build asked for; zero counts mean the defaults."""
    if uri:
        raw = _read(uri, s3_settings)
        texts = parse_texts(raw, PurePosixPath(urlparse(uri).path or uri).name)
    else:
        texts = (split_pydoc()[0],)
        raw = texts[0].encode()
    return CalibrationData(texts, hashlib.sha256(raw).hexdigest(),
                           num_samples or DEFAULT_NUM_SAMPLES, seq_len or DEFAULT_SEQ_LEN)
