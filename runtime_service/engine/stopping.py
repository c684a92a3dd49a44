"""When a sequence stops, and where its text ends: the stopping rules in one place, pure Python.

Token rules (end ids once min_new_tokens are out, stop token sequences, the length limit) look at
token ids; stop strings look at the detokenized text, which is cut before the first match so the
stop string itself is never sent.
"""

from __future__ import annotations

from runtime_service.engine.detokenizer import IncrementalDetokenizer
from runtime_service.engine.request import FinishReason
from runtime_service.engine.sequence import Sequence


def finish_reason(seq: Sequence, end_ids: tuple[int, ...]) -> FinishReason | None:
    """Why `seq` stops after its newest token, or None to go on."""
    p = seq.sampling
    if seq.num_output_tokens >= p.min_new_tokens:
        if seq.token_ids[-1] in end_ids:
            return FinishReason.END_ID
        for words in p.stop_token_ids:
            if seq.num_output_tokens >= len(words) and seq.token_ids[-len(words):] == list(words):
                return FinishReason.STOP
    if seq.num_tokens >= seq.max_total_tokens:
        return FinishReason.LENGTH
    return None


def cut_at_stop_string(detok: IncrementalDetokenizer, stop_strings: tuple[str, ...],
                       new_text: str) -> tuple[str, bool]:
    """Ends the text before the first stop string; returns the part of `new_text` still to send
    and whether a stop string matched. Only the tail that `new_text` can complete is searched."""
    text = detok.text
    longest = max(len(s) for s in stop_strings)
    search_from = max(0, len(text) - len(new_text) - longest + 1)
    hits = [i for s in stop_strings if (i := text.find(s, search_from)) >= 0]
    if not hits:
        return new_text, False
    cut = min(hits)
    emitted_before = len(text) - len(new_text)
    detok.text = text[:cut]
    return (text[emitted_before:cut] if cut > emitted_before else ""), True
