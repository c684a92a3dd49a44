"""LLaMA: embedding, RMSNorm, rotary, GQA attention over a paged KV cache, SwiGLU MLP, LM head.

Parameter names here are the engine format's tensor names (`layers.3.attn.qkv_proj.weight`), with
global layer indices so a pipeline stage holds only its own layers. Tensor parallelism lives in the
parallel linear layers; nothing else here knows about it. `sharding_rule` says, for every tensor
name, how the builder splits it over tensor-parallel ranks.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from runtime_service.model.parallel import SINGLE_RANK, ParallelContext
from runtime_service.model.layers.attention import AttentionMetadata, TorchReferenceAttention
from runtime_service.model.layers.linear import ColumnParallelLinear, RowParallelLinear
from runtime_service.model.layers.norm import RMSNorm
from runtime_service.model.layers.quantized_linear import WeightQuant
from runtime_service.model.layers.rotary import RotaryEmbedding
from runtime_service.format.linear_names import LINEARS, kiln_name
from runtime_service.format.model_config import ModelArgs


# How each decoder linear stores its weight, by its name in the layer ("mlp.down_proj"):
# None keeps the float dtype.
LinearQuants = dict[str, "WeightQuant | None"]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, rotary: RotaryEmbedding, backend,
                 parallel: ParallelContext, quants: LinearQuants):
        super().__init__()
        self.num_heads = args.num_heads // parallel.tp_size
        self.num_kv_heads = args.kv_heads_per_rank(parallel.tp_size)
        self.head_dim = args.head_dim
        sections, units = _COLUMN_SECTIONS["attn.qkv_proj"](args)
        self.qkv_proj = ColumnParallelLinear(args.hidden_size, sections, args.attention_bias,
                                             parallel, quants["attn.qkv_proj"], units)
        self.o_proj = RowParallelLinear(args.q_size, args.hidden_size, args.attention_bias, parallel,
                                        quants["attn.o_proj"])
        self.rotary = rotary
        self.backend = backend

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.local_sections, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        out = self.backend(q, k, v, k_cache, v_cache, meta, self.rotary)
        return self.o_proj(out.flatten(1))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs, parallel: ParallelContext, quants: LinearQuants):
        super().__init__()
        self.gate_up_proj = ColumnParallelLinear(
            args.hidden_size, (args.intermediate_size, args.intermediate_size), args.mlp_bias,
            parallel, quants["mlp.gate_up_proj"])
        self.down_proj = RowParallelLinear(args.intermediate_size, args.hidden_size, args.mlp_bias,
                                           parallel, quants["mlp.down_proj"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """down_proj(silu(gate) * up), the activation applied inside the down projection (with
        FP8's row scale from the gate_up launch where it gives one)."""
        gate_up, gate_amax = self.gate_up_proj.forward_gate_up(x)
        return self.down_proj.forward_gate_up(gate_up, gate_amax)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, rotary: RotaryEmbedding, backend,
                 parallel: ParallelContext, quants: LinearQuants):
        super().__init__()
        self.input_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.attn = Attention(args, rotary, backend, parallel, quants)
        self.post_attn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = FeedForward(args, parallel, quants)

    def forward(self, x, residual, meta, k_cache, v_cache):
        """The residual stream h comes in as x + residual (as x alone when residual is None) and
        leaves the same way, so each add happens inside the norm that reads its result."""
        x, residual = self.input_norm.forward_for(self.attn.qkv_proj, x, residual)
        x = self.attn(x, meta, k_cache, v_cache)
        x, residual = self.post_attn_norm.forward_for(self.mlp.gate_up_proj, x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    """One pipeline stage of a LLaMA model (the whole model when pp_size is 1). `quant` says how
    the decoder layers' linears store their weights, except those named in `unquantized`
    (`layers.3.mlp.down_proj`); embeddings, norms and the head stay in the engine dtype."""

    def __init__(self, args: ModelArgs, layer_ids: range, parallel: ParallelContext = SINGLE_RANK,
                 attention_backend=None, quant: WeightQuant | None = None,
                 unquantized: frozenset[str] = frozenset()):
        super().__init__()
        self.args = args
        self.parallel = parallel
        self.layer_ids = layer_ids
        self.kv_cache_dtype = "auto"     # or "int8" / "fp8": how the runner stores K and V
        backend = attention_backend or TorchReferenceAttention(
            args.num_heads // parallel.tp_size, args.kv_heads_per_rank(parallel.tp_size),
            args.head_dim)
        rotary = RotaryEmbedding(args)
        if parallel.is_first_stage:
            # Uninitialized: the loader replaces every weight (no random init of a 0.5B table).
            self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size,
                                             _weight=torch.empty(args.vocab_size, args.hidden_size))
            self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleDict(
            {str(i): TransformerBlock(args, rotary, backend, parallel, {
                linear: None if kiln_name(i, linear) in unquantized else quant
                for linear in LINEARS}) for i in layer_ids})
        if parallel.is_last_stage:
            self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
            self.lm_head = ColumnParallelLinear(args.hidden_size, (args.vocab_size,), False, parallel)

    def forward(self, tokens_or_hidden: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Token ids [T] on the first stage (hidden states [T, H] on later ones) -> hidden [T, H]:
        the residual stream after the stage's last layer, not normalised (compute_logits
        normalises the rows it needs; the next stage takes it as its input)."""
        x = self.embed_tokens(tokens_or_hidden) if self.parallel.is_first_stage else tokens_or_hidden
        residual = None
        for layer, (k_cache, v_cache) in zip(self.layers.values(), kv_caches):
            x, residual = layer(x, residual, meta, k_cache, v_cache)
        return x if residual is None else x + residual

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on the selected rows [B, H] -> float32 logits [B, vocab]
        (without the rows that padded a vocabulary tp does not divide)."""
        logits = self.parallel.all_gather_last_dim(self.lm_head(self.norm(hidden)))
        if logits.shape[-1] != self.args.vocab_size:
            logits = logits[..., :self.args.vocab_size].contiguous()
        return logits.float()

    def set_attention_backend(self, backend) -> None:
        """Swaps the attention backend of every layer (the runner picks it for the device)."""
        for layer in self.layers.values():
            layer.attn.backend = backend

    def tie_weights_if_needed(self) -> None:
        if (self.args.tie_word_embeddings and self.parallel.tp_size == 1
                and self.parallel.is_first_stage and self.parallel.is_last_stage):
            self.lm_head.weight = self.embed_tokens.weight


# (sections, units): q, k and v split in whole heads (fewer KV heads than ranks repeat).
_COLUMN_SECTIONS = {
    "attn.qkv_proj": lambda a: ((a.q_size, a.kv_size, a.kv_size), (a.head_dim,) * 3),
    "mlp.gate_up_proj": lambda a: ((a.intermediate_size, a.intermediate_size), (1, 1)),
}
_ROW_WEIGHTS = tuple(f"{layer}.{tensor}" for layer in ("attn.o_proj", "mlp.down_proj")
                     for tensor in ("weight", "qweight", "scales", "zeros"))
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")


def sharding_rule(name: str, args: ModelArgs) -> tuple[str, tuple, tuple]:
    """("column", sections, units), ("row", (), ()) or ("replicate", (), ()) for a full tensor
    name (units: layers/linear.py local_rows)."""
    if name == "lm_head.weight":
        return "column", (args.vocab_size,), (1,)
    match = _LAYER_NAME.match(name)
    if match:
        local = match.group(2)
        for prefix, sections in _COLUMN_SECTIONS.items():
            if local.startswith(prefix + "."):
                return ("column", *sections(args))
        if local in _ROW_WEIGHTS:
            return "row", (), ()
    return "replicate", (), ()


def layer_index(name: str) -> int | None:
    match = _LAYER_NAME.match(name)
    return int(match.group(1)) if match else None
