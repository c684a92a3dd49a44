"""Incremental detokenization: the text each new token adds, without re-decoding everything.

Decoding token by token breaks multi-byte characters and tokenizers that merge spaces across
tokens, so each step decodes a short window [prefix_offset:] and emits only the text past
read_offset once it no longer ends in a partial character (TGI's scheme).
"""

from __future__ import annotations

_PARTIAL = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int]):
        self.tokenizer = tokenizer
        self.token_ids: list[int] = list(prompt_token_ids[-6:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)

    def add(self, new_token_ids: list[int]) -> str:
        """Appends tokens and returns the newly complete text (may be empty)."""
        self.token_ids.extend(new_token_ids)
        prefix = self._decode(self.token_ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.token_ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(_PARTIAL):
            return ""
        new_text = full[len(prefix):]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        self.text += new_text
        return new_text

    def flush(self) -> str:
        """At the end of a request: the text still held back (a trailing partial character
        decodes to U+FFFD, which is what a full decode of the output would show too)."""
        prefix = self._decode(self.token_ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.token_ids[self.prefix_offset:])
        if len(full) <= len(prefix):
            return ""
        new_text = full[len(prefix):]
        self.prefix_offset = self.read_offset = len(self.token_ids)
        self.text += new_text
        return new_text
