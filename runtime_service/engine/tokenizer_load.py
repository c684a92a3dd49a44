"""An engine's tokenizer, loaded beside a start's other work instead of after it.

Importing transformers and reading a tokenizer took 2.8 s on the CI CPU for SmolLM2's (1.9 s the
import, 0.9 s the read), and a start does not need the tokenizer until it serves. So a start
loads it on a thread of its own and takes the result where it first needs it: the executor when
it starts (after its graph capture; waiting for it before the KV cache cost a fresh node's first
pod 3.05 s, bench/NOTES.md run 22c), the pod's gRPC process (with the engine core in its own
process) when the core has started.

The thread competes for the GIL with whatever the start does meanwhile: beside a weight load
that releases the GIL once per tensor, transformers' import and tokenizer cost the load 2.5 s on
a fresh node (run 22c), and begun after the capture's recording pass they held up its tuning for
9 s (run 23a). So the engine core, which only decodes, loads the builder's saved decoder instead
(engine/token_decoder.py: 0.3 s, no transformers), and the pod's process, which encodes too,
loads transformers' tokenizer in a process of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from runtime_service.errors import InvalidRequest

log = logging.getLogger("kiln.runtime")


def load_tokenizer(folder: str | Path | None):
    """The folder's tokenizer, local files only (no remote code), or None without a folder.
    Tokenizer files come with the model, from whoever made it: any way transformers fails on
    them (malformed JSON nested past the parser's depth, an unknown tokenizer class, a class
    that needs remote code) is an InvalidRequest naming the folder."""
    if folder is None:
        return None
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False,
                                             local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for bad files
        raise InvalidRequest(f"cannot load the tokenizer in {folder}: "
                             f"{type(exc).__name__}: {str(exc)[:300]}") from exc


class TokenizerLoad:
    """`load(folder)` (transformers' tokenizer by default) on a daemon thread, begun at once.
    `result()` waits: the tokenizer, or the exception the load raised (re-raised where the
    start needs it)."""

    def __init__(self, folder: str | Path | None, load=None):
        self.folder = folder
        self._load_function = load
        self._future: Future = Future()
        threading.Thread(target=self._load, name="kiln-tokenizer-load", daemon=True).start()

    def result(self, timeout: float | None = None):
        return self._future.result(timeout)

    def _load(self) -> None:
        # One line when it ends: a start's log then shows where the load ran (bench/NOTES.md).
        began = time.perf_counter()
        try:
            self._future.set_result((self._load_function or load_tokenizer)(self.folder))
            if self.folder is not None:
                log.info("tokenizer loaded in %.2f s (process %d)", time.perf_counter() - began,
                         os.getpid())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
            self._future.set_exception(exc)


def import_in_background() -> None:
    """Imports transformers' tokenizer classes on a daemon thread, begun now. The pod's process
    learns its tokenizer's folder only when the core has fetched the engine, and then loading
    it took as long as the rest of a warm start: 9.7 s beside the core's start, where 2.0 s
    alone, 1.4 s of it the import (bench/NOTES.md, run 24d). Begun with the core, the import
    is done by then. A failed import is left for the load to report."""
    threading.Thread(target=_import_tokenizer_classes, name="kiln-tokenizer-import",
                     daemon=True).start()


def _import_tokenizer_classes() -> None:
    try:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - the load raises it again, where it is needed
        log.debug("transformers' tokenizers did not import: %r", exc)


def load_in_background(folder: str | Path | None, load=None) -> TokenizerLoad:
    """`load(folder)` on a thread of its own, begun now."""
    return TokenizerLoad(folder, load)
