"""`kiln.hlapi.tokenizer`: the HLAPI's tokenizer names (kept in kiln.tokenizer)."""

from kiln.tokenizer import TokenizerBase, TransformersTokenizer, tokenizer_factory

__all__ = ["TokenizerBase", "TransformersTokenizer", "tokenizer_factory"]
