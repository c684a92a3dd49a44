"""Random-weight LLaMA models of any shape, saved as HF folders (safetensors).

Speed and kernel tests do not depend on weight values, and equality tests against transformers
only need both sides to read the same weights. A larger initializer range than HF's default keeps
logits well separated, so greedy ties between rounding-level differences are rare.
"""

from __future__ import annotations

from pathlib import Path

import torch


def make_random_llama(folder: Path, seed: int = 0, initializer_range: float = 0.2,
                      dtype: torch.dtype = torch.float32, **config) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    fields.update(config)
    torch.manual_seed(seed)
    hf_config = LlamaConfig(initializer_range=initializer_range, **fields)
    model = LlamaForCausalLM(hf_config).to(dtype).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def hf_greedy(folder: Path, prompt: list[int], max_new_tokens: int, device: str = "cpu",
              dtype: torch.dtype = torch.float32, model=None) -> list[int]:
    """transformers' greedy continuation of one prompt (no padding, no eos stop)."""
    from transformers import LlamaForCausalLM

    model = model or LlamaForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        # An explicit mask: HF would otherwise mask prompt tokens equal to the pad id.
        out = model.generate(ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def random_prompts(lengths, vocab_size: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in lengths]
