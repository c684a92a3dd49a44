"""An engine's tokenizer, loaded beside a start's other work instead of after it.

Importing transformers and reading a tokenizer took 2.8 s on the CI CPU for SmolLM2's (1.9 s the
import, 0.9 s the read), and a start does not need the tokenizer until it serves. So a start
begins the load as soon as it knows the engine's folder, on a thread of its own, and takes the
result where it first needs it: the executor when it starts (after its graph capture; waiting
for it before the KV cache cost a fresh node's first pod 3.05 s, bench/NOTES.md run 22c), the
pod's gRPC process (with the engine core in its own process) when the core has started.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path


def load_tokenizer(folder: str | Path | None):
    """The folder's tokenizer, local files only (no remote code), or None without a folder."""
    if folder is None:
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def load_in_background(folder: str | Path | None) -> Future:
    """Starts `load_tokenizer(folder)` on a daemon thread; the Future holds the tokenizer, or
    the exception the load raised (re-raised by `result()`, where the start needs it)."""
    future: Future = Future()

    def load() -> None:
        try:
            future.set_result(load_tokenizer(folder))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
            future.set_exception(exc)

    threading.Thread(target=load, name="kiln-tokenizer-load", daemon=True).start()
    return future
