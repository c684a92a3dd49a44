"""`SamplingConfig`: how tokens are chosen, and its one conversion to the wire message.

The fields and their order are the HLAPI's (end_id, pad_id, max_new_tokens, beam_width, then the
executor's sampling knobs); None means "the engine's default": greedy, 32 new tokens, stop on the
model's eos ids. Kiln's own extras follow as keywords. A one-element list (`top_k=[10]`, the
older batched spelling) is read as its value. `end_id` -1 never stops on a token.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

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


def _scalar(check):
    """`check`, after reading a one-element list as its value (the batched spelling)."""
    def checked(name: str, value):
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise InvalidArgument(
                    f"{name} takes one value, got {len(value)}; for one setting per prompt "
                    f"pass generate() a list of SamplingConfigs")
            value = value[0]
        return check(name, value)
    return checked


def _early_stopping(name: str, value):
    """The HLAPI's integer form (1 stop at beam_width hypotheses, 0 heuristic, >1 never) or
    transformers' True / False / "never"."""
    if value is None or value == "never" or isinstance(value, bool):
        return value
    if isinstance(value, int) and value >= 0:
        return value
    raise InvalidArgument(f"{name} must be an int >= 0, True, False or \"never\", got {value!r}")


@dataclass(slots=True)
class SamplingConfig(Checked):
    end_id: int | None = None
    pad_id: int | None = None
    max_new_tokens: int | None = None
    beam_width: int = 1
    top_k: int | None = None
    top_p: float | None = None
    top_p_min: float | None = None
    top_p_reset_ids: int | None = None
    top_p_decay: float | None = None
    random_seed: int | None = None
    temperature: float | None = None
    min_length: int | None = None
    beam_search_diversity_rate: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    early_stopping: int | bool | str | None = None
    _: KW_ONLY
    min_new_tokens: int = 0
    min_p: float = 0.0
    num_return_sequences: int | None = None      # None: every beam (beam_width sequences)
    ignore_eos: bool = False
    return_log_probs: bool = False
    top_logprobs: int = 0                 # the n most likely tokens at each output position
    return_prompt_logprobs: bool = False
    stop_words: list | None = None
    bad_words: list | None = None

    def early_stopping_wire(self) -> bool | str | None:
        """early_stopping as transformers spells it: True, False or "never"."""
        value = self.early_stopping
        if value is None:
            return None
        if value == "never" or (not isinstance(value, bool) and value > 1):
            return "never"
        return bool(value)

    def to_proto(self, encode=None) -> tuple[runtime_pb2.SamplingConfig, list, list]:
        """The wire SamplingConfig and the stop/bad WordSequences. With `encode` (a custom
        tokenizer's), string words are tokenized here instead of on the server. Unset fields
        stay unset, so the engine's defaults apply."""
        message = runtime_pb2.SamplingConfig(
            min_new_tokens=max(self.min_new_tokens, self.min_length or 0),
            temperature=self.temperature or 0.0, top_k=self.top_k or 0, min_p=self.min_p,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0, ignore_eos=self.ignore_eos,
            beam_width=self.beam_width,
            beam_search_diversity_rate=self.beam_search_diversity_rate or 0.0)
        optional = {"max_new_tokens": self.max_new_tokens, "top_p": self.top_p or None,
                    "repetition_penalty": self.repetition_penalty,
                    "length_penalty": self.length_penalty, "seed": self.random_seed,
                    "end_id": self.end_id, "num_return_sequences": self.num_return_sequences,
                    "top_p_min": self.top_p_min, "top_p_decay": self.top_p_decay,
                    "top_p_reset_ids": self.top_p_reset_ids}
        for name, value in optional.items():
            if value is not None:
                setattr(message, name, value)
        early = self.early_stopping_wire()
        if early == "never":
            message.early_stopping_never = True
        elif early is not None:
            message.early_stopping = early
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
    "end_id": _scalar(integer(-1, 1 << 31, optional=True)),
    "pad_id": _scalar(integer(-1, 1 << 31, optional=True)),
    "max_new_tokens": _scalar(integer(1, 1 << 20, optional=True)),
    "beam_width": _scalar(integer(1, 64)),
    "top_k": _scalar(integer(0, 1 << 20, optional=True)),
    "top_p": _scalar(number(0.0, 1.0, optional=True)),
    "top_p_min": _scalar(number(0.0, 1.0, optional=True, low_open=True)),
    "top_p_reset_ids": _scalar(integer(-1, 1 << 31, optional=True)),
    "top_p_decay": _scalar(number(0.0, 1.0, optional=True, low_open=True)),
    "random_seed": _scalar(integer(0, 2 ** 63 - 1, optional=True)),
    "temperature": _scalar(number(0.0, 100.0, optional=True)),
    "min_length": _scalar(integer(0, 1 << 20, optional=True)),
    "beam_search_diversity_rate": _scalar(number(0.0, 100.0, optional=True)),
    "repetition_penalty": _scalar(number(0.0, 100.0, optional=True, low_open=True)),
    "presence_penalty": _scalar(number(-100.0, 100.0, optional=True)),
    "frequency_penalty": _scalar(number(-100.0, 100.0, optional=True)),
    "length_penalty": _scalar(number(-100.0, 100.0, optional=True)),
    "early_stopping": _scalar(_early_stopping),
    "min_new_tokens": integer(0, 1 << 20), "min_p": number(0.0, 1.0),
    "num_return_sequences": integer(1, 64, optional=True), "ignore_eos": boolean,
    "return_log_probs": boolean, "top_logprobs": integer(0, 20),
    "return_prompt_logprobs": boolean, "stop_words": _words, "bad_words": _words,
}
