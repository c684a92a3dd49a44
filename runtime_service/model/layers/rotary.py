"""Rotary position embedding with LLaMA's scalings: default, linear, dynamic NTK and llama3.

Frequencies are computed exactly as transformers computes them (float32, rotate-half layout), so
the model matches HF outputs. Dynamic NTK depends on the sequence length: each token uses the
frequencies for its own sequence's length after this step, which is what HF does for one sequence.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from runtime_service.model import kernels
from runtime_service.format.model_config import ModelArgs


def base_inv_freq(args: ModelArgs, seq_len: int | None = None) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] for the model's rope type (at `seq_len` for dynamic)."""
    dim = args.head_dim
    base = args.rope_theta
    scaling = args.rope_scaling
    if scaling.rope_type == "dynamic":
        length = max(seq_len or 0, args.max_position_embeddings)
        base = base * ((scaling.factor * length / args.max_position_embeddings)
                       - (scaling.factor - 1)) ** (dim / (dim - 2))
    # On the host, also while the loader builds the model on the meta device (meta arithmetic
    # would import torch's Python decompositions, seconds of start-up).
    positions = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu")
    inv_freq = 1.0 / (base ** (positions.float() / dim))
    if scaling.rope_type == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.rope_type == "llama3":
        inv_freq = _llama3_scale(inv_freq, scaling)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, scaling) -> torch.Tensor:
    """Llama 3.1's smooth interpolation between scaled low and unscaled high frequencies."""
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """Applies rotary embedding to q [T, Hq, D] and k [T, Hkv, D] at `positions` [T]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.dynamic = args.rope_scaling.rope_type == "dynamic"
        self.register_buffer("inv_freq", base_inv_freq(args), persistent=False)
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def cos_sin_table(self, device: torch.device, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for every position up to max_position_embeddings, computed by `cos_sin` (so
        a lookup equals the direct computation), cached per device and dtype."""
        key = (device, dtype)
        if key not in self._tables:
            positions = torch.arange(self.args.max_position_embeddings, device=device)
            self._tables[key] = self.cos_sin(positions, None, dtype)
        return self._tables[key]

    def cos_sin(self, positions: torch.Tensor, token_seq_lens: torch.Tensor | None,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq.to(positions.device)
        if self.dynamic and token_seq_lens is not None:
            freqs = torch.empty(positions.shape[0], inv_freq.shape[0], device=positions.device)
            for length in torch.unique(token_seq_lens).tolist():
                rows = token_seq_lens == length
                scaled = base_inv_freq(self.args, int(length)).to(positions.device)
                freqs[rows] = positions[rows, None].float() * scaled[None, :]
        else:
            freqs = positions[:, None].float() * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def kernel_cos_sin(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cos/sin table the Triton kernel reads for q, or None where `forward` takes the
        torch path (dynamic NTK, no kernels, float32): the one place that choice is made, so a
        backend fusing rotary into its own kernel rotates exactly when `forward` would."""
        if self.dynamic or not kernels.available(q) or q.dtype == torch.float32:
            return None
        return self.cos_sin_table(q.device, q.dtype)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                token_seq_lens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.kernel_cos_sin(q)
        if table is not None:
            from runtime_service.model.kernels.rotary import apply_rotary_
            return apply_rotary_(q, k, positions, *table)
        cos, sin = self.cos_sin(positions, token_seq_lens, q.dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
