"""Activation-aware weight quantization (AWQ, Lin et al. 2023), on the runtime's own model.

The model runs the calibration windows layer by layer. For each decoder layer, each group of
linears that reads one activation (qkv after the input norm; o_proj after v when no KV head is
shared; gate_up after the post-attention norm; down after up) gets a per-input-channel scale s
from a grid search: s = mean|x|^a / mean|w|^(1-a) for a in 0, 1/20, ... (and s = 1, plain
round-to-nearest, as a candidate too), keeping the one whose int4 round trip of W*s, fed x/s,
best reproduces the layer's float output. s is folded into the op before (norm weight or the
producing linear's rows divided by s), so the model's float function is unchanged and nothing
beyond the standard int4 tensors is stored. Then each weight's groups are clipped to the range
that minimizes the int4 output error on sampled tokens. The result is the set of rewritten full
tensors; quantization proper is the ordinary int4 path (builder_service/quantizer.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from runtime_service.engine.tokenizer_load import load_tokenizer
from runtime_service.errors import FailedPrecondition
from runtime_service.format.engine_config import QuantConfig
from runtime_service.format.linear_names import LINEARS, kiln_name
from runtime_service.model.layers.attention import AttentionMetadata
from runtime_service.model.layers.quantize import fake_quantize_int4
from runtime_service.model.loader import load_model, tokenizer_dir_for

from builder_service.calibration import CalibrationData

GRID_POINTS = 20
SEARCH_TOKENS = 2048           # tokens the scale search scores each candidate on
CLIP_TOKENS = 512              # tokens the clipping search scores on (AutoAWQ's choice)
CLIP_STEPS = 10                # shrink the group range by up to 50%, in 5% steps
CLIP_ROWS_PER_BATCH = 256


def calibration_batch(windows: list[list[int]], num_kv_heads: int, head_dim: int,
                      dtype: torch.dtype) -> tuple[torch.Tensor, AttentionMetadata, torch.Tensor]:
    """Token ids [T], attention metadata with one cache block per window, and a zeroed KV cache
    [windows, seq_len, kv_heads, head_dim] for one layer (reused layer after layer)."""
    seq_len = max(len(w) for w in windows)
    windows = [w for w in windows if len(w) == seq_len]
    n = len(windows)
    tokens = torch.tensor([t for w in windows for t in w], dtype=torch.long)
    positions = torch.arange(seq_len).repeat(n)
    slots = torch.arange(n * seq_len)
    meta = AttentionMetadata(
        positions=positions, slot_mapping=slots,
        query_start=torch.arange(n + 1, dtype=torch.int32) * seq_len,
        seq_lens=torch.full((n,), seq_len, dtype=torch.int32),
        block_tables=torch.arange(n, dtype=torch.int32)[:, None],
        token_seq_lens=torch.full((n * seq_len,), seq_len, dtype=torch.long),
        query_lens_host=[seq_len] * n, seq_lens_host=[seq_len] * n, block_size=seq_len)
    cache = torch.zeros(n, seq_len, num_kv_heads, head_dim, dtype=dtype)
    return tokens, meta, cache


def _sample_rows(x: torch.Tensor, count: int) -> torch.Tensor:
    if x.shape[0] <= count:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, count).long()]


def search_scales(x: torch.Tensor, weight: torch.Tensor, group_size: int,
                  output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The per-input-channel scale s [K] minimizing |output(x, W) - output(x / s, Q(W * s))|^2,
    where Q is the int4 round trip; `output(inputs, weight)` computes what the loss compares."""
    x_mean = x.abs().mean(dim=0)
    groups = weight.abs().reshape(-1, group_size)
    w_mean = (groups / (groups.amax(dim=1, keepdim=True) + 1e-6)).reshape(weight.shape).mean(0)
    xs = _sample_rows(x, SEARCH_TOKENS)
    reference = output(xs, weight)
    candidates = [torch.ones_like(x_mean)]
    for step in range(GRID_POINTS):
        ratio = step / GRID_POINTS
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        candidates.append(s / (s.max() * s.min()).sqrt())
    best, best_loss = candidates[0], float("inf")
    for s in candidates:
        # x @ (Q(W s) / s)^T equals (x / s) @ Q(W s)^T: score the folded form directly
        loss = (output(xs, fake_quantize_int4(weight * s, group_size) / s) - reference
                ).pow(2).mean().item()
        if loss < best_loss:
            best, best_loss = s, loss
    return best


def search_clip(x: torch.Tensor, weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """weight with each group clamped to the symmetric range (a shrink of its own max |w|)
    whose int4 round trip best reproduces x's per-group partial products."""
    xs = _sample_rows(x, CLIP_TOKENS)
    n, k = weight.shape
    xg = xs.reshape(xs.shape[0], k // group_size, group_size)
    out = torch.empty_like(weight)
    for start in range(0, n, CLIP_ROWS_PER_BATCH):
        w = weight[start:start + CLIP_ROWS_PER_BATCH]
        wg = w.reshape(w.shape[0], k // group_size, group_size)
        reference = torch.einsum("tgc,ngc->ntg", xg, wg)
        original_max = wg.abs().amax(dim=-1)
        best_max = original_max.clone()
        best_err = torch.full_like(original_max, float("inf"))
        for step in range(CLIP_STEPS):
            limit = original_max * (1 - step / GRID_POINTS)
            clipped = torch.maximum(torch.minimum(wg, limit[..., None]), -limit[..., None])
            q = fake_quantize_int4(clipped.reshape(w.shape), group_size).reshape(wg.shape)
            err = (torch.einsum("tgc,ngc->ntg", xg, q) - reference).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, limit, best_max)
        clipped = torch.maximum(torch.minimum(wg, best_max[..., None]), -best_max[..., None])
        out[start:start + CLIP_ROWS_PER_BATCH] = clipped.reshape(w.shape)
    return out


class _Captured:
    """The inputs of a layer's linears during one forward pass (down's is silu(gate) * up)."""

    def __init__(self, layer: nn.Module):
        self.inputs: dict[str, torch.Tensor] = {}
        attn, mlp = layer.attn, layer.mlp
        self._hooks = [
            attn.qkv_proj.register_forward_hook(self._store("qkv", lambda i, o: i[0])),
            attn.o_proj.register_forward_hook(self._store("o", lambda i, o: i[0])),
            mlp.gate_up_proj.register_forward_hook(self._store("gate_up", lambda i, o: i[0])),
            mlp.gate_up_proj.register_forward_hook(self._store("down", lambda i, o: _swiglu(o))),
        ]

    def _store(self, key: str, pick):
        def hook(_module, inputs, output):
            self.inputs[key] = pick(inputs, output).detach()
        return hook

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up


def _linear_output(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x @ weight.T


def _rewrite_layer(layer: nn.Module, inputs: dict[str, torch.Tensor], args,
                   group_size: int, quantized: frozenset[str] = frozenset(LINEARS)) -> None:
    """Scales and clips one layer's weights in place (norms absorb the inverse scales). Only
    the linears in `quantized` ("mlp.down_proj") are searched and clipped: one left
    unquantized gains nothing from either. It may still absorb the next linear's inverse
    scale (v's rows for o, up's for down), which keeps the float function as it was."""
    attn, mlp = layer.attn, layer.mlp
    qkv, o = attn.qkv_proj.weight.data, attn.o_proj.weight.data
    gate_up, down = mlp.gate_up_proj.weight.data, mlp.down_proj.weight.data
    inter = args.intermediate_size
    v_start = args.q_size + args.kv_size

    if "attn.qkv_proj" in quantized:
        s = search_scales(inputs["qkv"], qkv, group_size, _linear_output)
        layer.input_norm.weight.data /= s
        qkv *= s
        inputs["qkv"] = inputs["qkv"] / s

    if args.num_kv_heads == args.num_heads and "attn.o_proj" in quantized:
        # v's channels feed o_proj one to one
        s = search_scales(inputs["o"], o, group_size, _linear_output)
        qkv[v_start:] /= s[:, None]
        o *= s
        inputs["o"] = inputs["o"] / s

    def activation(x, weight):       # gate and up scored through SwiGLU, as down reads them
        return _swiglu(x @ weight.T)
    if "mlp.gate_up_proj" in quantized:
        s = search_scales(inputs["gate_up"], gate_up, group_size, activation)
        layer.post_attn_norm.weight.data /= s
        gate_up *= s
        inputs["gate_up"] = inputs["gate_up"] / s

    if "mlp.down_proj" in quantized:
        s = search_scales(inputs["down"], down, group_size, _linear_output)
        gate_up[inter:] /= s[:, None]
        down *= s
        inputs["down"] = inputs["down"] / s

    # q and k are left unclipped: attention logits are the most sensitive to their range
    if "attn.qkv_proj" in quantized:
        qkv[v_start:] = search_clip(inputs["qkv"], qkv[v_start:].clone(), group_size)
    for linear, weight, key in (("attn.o_proj", o, "o"), ("mlp.gate_up_proj", gate_up, "gate_up"),
                                ("mlp.down_proj", down, "down")):
        if linear in quantized:
            weight.copy_(search_clip(inputs[key], weight, group_size))


def awq_rewrite(folder: Path, kind: str, quant: QuantConfig, calibration: CalibrationData,
                progress: Callable[[int, int, str], None],
                unquantized: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """The full tensors AWQ rewrites (norms and decoder linears, float32, Kiln names), for the
    unsplit model in `folder`, leaving the linears named in `unquantized` as they are.
    `progress(done_layers, total_layers, message)`."""
    tokenizer_dir = tokenizer_dir_for(Path(folder), kind)
    if tokenizer_dir is None:
        raise FailedPrecondition(f"{quant.algo} calibrates on text, but {folder} has no tokenizer")
    windows = calibration.windows(load_tokenizer(tokenizer_dir))
    model = load_model(folder, "cpu", "float32").model
    args = model.args
    tokens, meta, cache = calibration_batch(windows, args.num_kv_heads, args.head_dim,
                                            torch.float32)
    total = args.num_layers
    progress(0, total, f"{len(windows)} windows of {len(windows[0])} tokens")
    with torch.inference_mode():
        hidden = model.embed_tokens(tokens)
        for index, layer in enumerate(model.layers.values()):
            captured = _Captured(layer)
            try:
                out, residual = layer(hidden, None, meta, cache, cache.clone())
            finally:
                captured.remove()
            quantized = frozenset(linear for linear in LINEARS
                                  if kiln_name(index, linear) not in unquantized)
            _rewrite_layer(layer, captured.inputs, args, quant.group_size, quantized)
            hidden = out + residual
            progress(index + 1, total, f"layer {index}")
    rewritten = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("layers."):
            rewritten[name] = tensor.clone()
    return rewritten
