"""`kiln.tokenizer` (kiln.hlapi.tokenizer): the tokenizer protocol an LLM accepts, and the transformers one.

An LLM needs a tokenizer only to turn text into ids on the client (otherwise the runtime
tokenizes): anything with encode / decode and eos_token_id / pad_token_id works; TokenizerBase
names that protocol for users who subclass it. transformers is imported only when a
TransformersTokenizer is made, so `import kiln` stays light.
"""

from __future__ import annotations

from pathlib import Path


class TokenizerBase:
    """The protocol: encode(text) -> ids, decode(ids) -> text, batch_decode, and the end and
    pad ids. Subclasses override what they support."""

    @property
    def eos_token_id(self) -> int | None:
        raise NotImplementedError

    @property
    def pad_token_id(self) -> int | None:
        return None

    def encode(self, text: str, *args, **kwargs) -> list[int]:
        raise NotImplementedError

    def decode(self, token_ids: list[int], *args, **kwargs) -> str:
        raise NotImplementedError

    def batch_encode_plus(self, texts: list[str], *args, **kwargs) -> dict:
        return {"input_ids": [self.encode(text, *args, **kwargs) for text in texts]}

    def batch_decode(self, sequences: list[list[int]], *args, **kwargs) -> list[str]:
        return [self.decode(ids, *args, **kwargs) for ids in sequences]


class TransformersTokenizer(TokenizerBase):
    """A transformers tokenizer behind TokenizerBase."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str, *args, **kwargs):
        return self.tokenizer(text, *args, **kwargs)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.tokenizer.pad_token_id

    def encode(self, text: str, *args, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(text, *args, **kwargs))

    def decode(self, token_ids: list[int], *args, **kwargs) -> str:
        return self.tokenizer.decode(token_ids, *args, **kwargs)

    def batch_encode_plus(self, texts: list[str], *args, **kwargs) -> dict:
        return self.tokenizer.batch_encode_plus(texts, *args, **kwargs)

    def batch_decode(self, sequences, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(sequences, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_dir: str, **kwargs) -> "TransformersTokenizer":
        from transformers import AutoTokenizer
        return cls(AutoTokenizer.from_pretrained(pretrained_model_dir, **kwargs))


def tokenizer_factory(obj=None, **kwargs) -> TokenizerBase | None:
    """None stays None, a folder becomes a TransformersTokenizer, a TokenizerBase is kept, and a
    transformers tokenizer is wrapped."""
    if obj is None or isinstance(obj, TokenizerBase):
        return obj
    if isinstance(obj, (str, Path)):
        return TransformersTokenizer.from_pretrained(str(obj), **kwargs)
    if hasattr(obj, "encode") and hasattr(obj, "decode"):
        return TransformersTokenizer(obj)
    raise TypeError(f"a tokenizer must be a TokenizerBase, a transformers tokenizer or a "
                    f"folder, got {type(obj).__name__}")
