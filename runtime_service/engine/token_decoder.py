"""The engine core's tokenizer: token ids to text, without importing transformers.

The engine core only decodes (streamed text, stop strings, beams); encoding, chat templates and
the rest happen in the pod's gRPC process, which loads transformers' tokenizer. Importing
transformers and building its tokenizer held the core's GIL for 2.3 s on the CI CPU (1.7 s of
it the import) and for 6-9 s on a fresh GPU node whose compile workers kept every core busy,
all of it on the start's path (bench/NOTES.md, runs 22c and 23a).

transformers' fast tokenizers decode in the `tokenizers` library (`_decode` calls the backend's
`decode`). So the builder saves that backend, as transformers configured it (added and special
tokens included), beside the engine's tokenizer files (`DECODER_FILE`), once it has checked
that it decodes every token and a sample of sequences as transformers does; the core reads it
back in about 0.3 s. A folder without the file (an engine built before it, an HF folder served
as it is, a tokenizer the check refused) decodes through transformers as before.
"""

from __future__ import annotations

import random
from pathlib import Path

from runtime_service.errors import InvalidRequest

DECODER_FILE = "kiln_decoder.json"
_SAMPLE_LENGTH = 16         # tokens per checked sequence: spaces and merges across tokens
_SAMPLE_SEQUENCES = 2000


class TokenDecoder:
    """The `decode` of a transformers fast tokenizer, on its `tokenizers` backend alone."""

    def __init__(self, backend):
        self._backend = backend

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool = False) -> str:
        if clean_up_tokenization_spaces:
            raise ValueError("Kiln decodes without transformers' clean-up of spaces")
        return self._backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)


def load_decoder(folder: str | Path | None):
    """A decoder for the tokenizer in `folder`: its saved backend where the builder wrote one,
    otherwise transformers' tokenizer (engine/tokenizer_load.py); None without a folder."""
    from runtime_service.engine.tokenizer_load import load_tokenizer

    path = Path(folder) / DECODER_FILE if folder is not None else None
    if path is None or not path.is_file():
        return load_tokenizer(folder)
    from tokenizers import Tokenizer
    try:
        return TokenDecoder(Tokenizer.from_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - the library raises bare Exceptions on bad files
        raise InvalidRequest(f"cannot load the tokenizer in {folder}: {DECODER_FILE}: "
                             f"{type(exc).__name__}: {str(exc)[:300]}") from exc


def save_decoder(tokenizer, folder: Path, seed: int = 0) -> str:
    """Writes `folder/DECODER_FILE` from transformers' `tokenizer` where its backend decodes as
    it does; returns '' when written, else why not (the core then loads transformers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return f"{type(tokenizer).__name__} is not a fast tokenizer"
    from tokenizers import Tokenizer

    saved = backend.to_str()
    mismatch = _first_mismatch(tokenizer, Tokenizer.from_str(saved), seed)
    if mismatch:
        return mismatch
    (Path(folder) / DECODER_FILE).write_text(saved, encoding="utf-8")
    return ""


def _first_mismatch(tokenizer, backend, seed: int) -> str:
    """'' if `backend` (read back from its saved form) decodes as `tokenizer` does: every id
    alone, the vocabulary in runs of consecutive ids, and random sequences; else the first
    sequence that differs."""
    size = len(tokenizer)
    ids = list(range(size))
    sequences = [[i] for i in ids]
    sequences += [ids[i:i + _SAMPLE_LENGTH] for i in range(0, size, _SAMPLE_LENGTH)]
    draw = random.Random(seed)
    sequences += [[draw.randrange(size) for _ in range(_SAMPLE_LENGTH)]
                  for _ in range(_SAMPLE_SEQUENCES)]
    for skip in (True, False):
        expected = tokenizer.batch_decode(sequences, skip_special_tokens=skip,
                                          clean_up_tokenization_spaces=False)
        got = backend.decode_batch(sequences, skip_special_tokens=skip)
        for sequence, want, have in zip(sequences, expected, got):
            if want != have:
                return (f"its backend decodes {sequence[:8]} as {have[:40]!r}, transformers as "
                        f"{want[:40]!r} (skip_special_tokens={skip})")
    return ""
