"""`SamplingConfig`: how tokens are chosen, and its one conversion to the wire message.

temperature 0 (the default) is greedy; set temperature > 0 to sample, optionally narrowed by
top_k, top_p or min_p. `end_id` None stops on the model's eos ids, -1 never stops on a token.
Stop and bad words are strings or token-id lists.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln._checks import Checked, boolean, integer, number
from kiln.errors import InvalidArgument
from kiln.v1 import runtime_pb2

MAX_WORDS = 64


def _words(name: str, value):
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidArgument(f"{name} must be a list of strings or token-id lists, got {value!r}")
    if len(value) > MAX_WORDS:
        raise InvalidArgument(f"{name} holds {len(value)} entries; at most {MAX_WORDS}")
    for word in value:
        if isinstance(word, str):
            if not word:
                raise InvalidArgument(f"{name} holds an empty string")
        elif not (isinstance(word, (list, tuple)) and word and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in word)):
            raise InvalidArgument(f"{name} entries must be strings or non-empty lists of token "
                                  f"ids, got {word!r}")
    return list(value)


@dataclass(slots=True)
class SamplingConfig(Checked):
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    beam_width: int = 1
    num_return_sequences: int | None = None      # None: every beam (beam_width sequences)
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    length_penalty: float = 1.0
    early_stopping: bool = True
    random_seed: int | None = None
    end_id: int | None = None
    pad_id: int | None = None
    ignore_eos: bool = False
    return_log_probs: bool = False
    top_logprobs: int = 0                 # the n most likely tokens at each output position
    return_prompt_logprobs: bool = False
    stop_words: list | None = None
    bad_words: list | None = None

    def to_proto(self, encode=None) -> tuple[runtime_pb2.SamplingConfig, list, list]:
        """The wire SamplingConfig and the stop/bad WordSequences. With `encode` (a custom
        tokenizer's), string words are tokenized here instead of on the server."""
        message = runtime_pb2.SamplingConfig(
            max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, ignore_eos=self.ignore_eos,
            beam_width=self.beam_width, length_penalty=self.length_penalty,
            early_stopping=self.early_stopping)
        if self.num_return_sequences is not None:
            message.num_return_sequences = self.num_return_sequences
        if self.random_seed is not None:
            message.seed = self.random_seed
        if self.end_id is not None:
            message.end_id = self.end_id
        return message, _to_words(self.stop_words, encode), _to_words(self.bad_words, encode)


def _to_words(words, encode) -> list[runtime_pb2.WordSequence]:
    out = []
    for word in words or ():
        if isinstance(word, str) and encode is None:
            out.append(runtime_pb2.WordSequence(text=word))
        else:
            ids = encode(word) if isinstance(word, str) else word
            out.append(runtime_pb2.WordSequence(token_ids=runtime_pb2.TokenIds(ids=list(ids))))
    return out


SamplingConfig._checks = {
    "max_new_tokens": integer(1, 1 << 20), "min_new_tokens": integer(0, 1 << 20),
    "beam_width": integer(1, 64), "num_return_sequences": integer(1, 64, optional=True),
    "temperature": number(0.0, 100.0),
    "top_k": integer(0, 1 << 20), "top_p": number(0.0, 1.0, low_open=True),
    "min_p": number(0.0, 1.0), "repetition_penalty": number(0.0, 100.0, low_open=True),
    "presence_penalty": number(-100.0, 100.0), "frequency_penalty": number(-100.0, 100.0),
    "length_penalty": number(-100.0, 100.0), "early_stopping": boolean,
    "random_seed": integer(0, 2 ** 63 - 1, optional=True),
    "end_id": integer(-1, 1 << 31, optional=True), "pad_id": integer(0, 1 << 31, optional=True),
    "ignore_eos": boolean, "return_log_probs": boolean, "top_logprobs": integer(0, 20),
    "return_prompt_logprobs": boolean, "stop_words": _words, "bad_words": _words,
}
