"""Tiny random-weight LLaMA folders for builder and store tests (HF layout, safetensors only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=False)


def make_tiny_llama(folder: Path, seed: int = 0, with_tokenizer: bool = True, **overrides) -> Path:
    """Writes config.json, model.safetensors and (optionally) tokenizer files into `folder`."""
    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY, **overrides})
    model = LlamaForCausalLM(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    if with_tokenizer:
        vocab = {f"w{i}": i for i in range(config.vocab_size - 1)}
        vocab["[UNK]"] = config.vocab_size - 1
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": "{{ messages }}"}))
    return folder
