"""Linear layers and the tensor-parallel sharding rules, written once for builder and runtime.

A column-parallel layer splits its output features over ranks (each fused section separately, so
rank r of a fused QKV holds its own q, k and v heads); a row-parallel layer splits its input
features and all-reduces the partial sums. The builder calls `shard_columns` / `shard_rows` when it
writes rank files; the runtime loads those shards straight into these modules.

Both layers send decode-sized inputs on CUDA to the Triton GEMV (kernels/gemv.py, tuned per
shape to stream the weight at memory bandwidth): up to GEMV_MAX_ROWS rows always, and up to
kernels.GEMV_ROW_LIMIT (64) inside the decode graphs (`gemv_rows_up_to`). Everything else, and every CPU input,
goes to nn.functional.linear. SwiGLU's down projection can take the gate_up
projection itself (`RowParallelLinear.forward_gate_up`): at decode the GEMV then forms
silu(gate) * up as it loads its input, saving the activation kernel's launch and round trip
(so does the fp8 one-row kernel, for one row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from runtime_service.model import kernels
from runtime_service.model.layers.quantized_linear import (Fp8Rows, WeightQuant,
                                                           add_quantized_weight, forms_gate_up,
                                                           quantized_gate_up, quantized_linear,
                                                           takes_fp8_rows)
from runtime_service.model.parallel import SINGLE_RANK, ParallelContext

# Rows up to which the GEMV runs instead of cuBLAS anywhere: the decode graphs' batch sizes
# 1, 2, 4, 8, tuned while the graphs warm up. The GEMV takes up to 64 rows, but tuning a row
# bucket compiles and times a dozen kernels per shape (seconds): the decode graphs raise the
# limit while they warm up and capture (startup time), and an eager prefill of 9-64 tokens
# never stalls on a first-use tuning.
GEMV_MAX_ROWS = 8

_gemv_enabled = True
_gemv_max_rows = GEMV_MAX_ROWS


def set_small_batch_gemv(enabled: bool) -> bool:
    """Switches (process-wide) whether decode-sized linears use the Triton GEMV (True) or cuBLAS
    (False), so a benchmark can compare the two on the same weights in one process; returns the
    previous setting. A captured CUDA graph keeps the path that was on when it was captured."""
    global _gemv_enabled
    previous, _gemv_enabled = _gemv_enabled, enabled
    return previous


@contextlib.contextmanager
def gemv_enabled(enabled: bool) -> Iterator[None]:
    """`set_small_batch_gemv(enabled)` for the duration of the block."""
    previous = set_small_batch_gemv(enabled)
    try:
        yield
    finally:
        set_small_batch_gemv(previous)


@contextlib.contextmanager
def gemv_rows_up_to(rows: int) -> Iterator[None]:
    """Within the block, linears of up to `rows` rows (at most the GEMV's row limit, 64) take
    the GEMV: for the decode graphs, whose warm-up tunes each row bucket before capture."""
    global _gemv_max_rows
    previous = _gemv_max_rows
    _gemv_max_rows = max(GEMV_MAX_ROWS, min(rows, kernels.GEMV_ROW_LIMIT))
    try:
        yield
    finally:
        _gemv_max_rows = previous


def uses_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """True when `linear(x, weight, bias)` runs the Triton GEMV."""
    return (_gemv_enabled and x.dim() == 2 and 0 < x.shape[0] <= _gemv_max_rows
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype)
            and x.stride(1) == 1 and weight.is_contiguous() and kernels.available(x))


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """nn.functional.linear, with decode-sized CUDA inputs sent to the Triton GEMV."""
    if uses_gemv(x, weight, bias):
        from runtime_service.model.kernels.gemv import gemv
        return gemv(x, weight, bias)
    return nn.functional.linear(x, weight, bias)


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear(silu(gate) * up, weight, bias) for gate_up = [gate | up], bit for bit: decode-sized
    CUDA inputs run the gated GEMV (which rounds silu(gate) * up as the activation kernel does),
    the rest the activation followed by `linear`."""
    if uses_gemv(gate_up, weight, bias):
        from runtime_service.model.kernels.gemv import gemv
        return gemv(gate_up, weight, bias, gated=True)
    return linear(_silu_and_mul(gate_up), weight, bias)


def _silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if kernels.available(gate_up) and gate_up.dtype != torch.float32:
        from runtime_service.model.kernels.activation import silu_and_mul
        return silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up


def local_rows(size: int, tp_size: int, unit: int = 1) -> int:
    """Rows of a `size`-row column section on each of `tp_size` ranks, the section split in
    whole `unit`s (a head's rows for q, k and v).
    - Fewer units than ranks (2 KV heads at tp 4): each rank holds one unit, repeated across
      ranks, as TensorRT-LLM repeats its KV heads.
    - Otherwise a section tp does not divide (a vocabulary of 32,001 at tp 2; heads and MLP
      widths must divide) is padded with zero rows to the next multiple, as TensorRT-LLM pads
      its vocabulary; the logits of those rows are cut off after the gather
      (LlamaModel.compute_logits)."""
    if unit > 1 and size // unit < tp_size:
        return unit
    return -(-size // tp_size)


def rank_rows(size: int, tp_size: int, tp_rank: int, unit: int = 1) -> tuple[int, int]:
    """(start, stop) of rank `tp_rank`'s rows of the section (before any padding)."""
    units = size // unit
    if unit > 1 and units < tp_size:
        index = tp_rank * units // tp_size
        return index * unit, (index + 1) * unit
    step = local_rows(size, tp_size)
    start = min(size, tp_rank * step)
    return start, min(size, start + step)


def shard_columns(full: torch.Tensor, sections: Sequence[int], tp_rank: int,
                  tp_size: int, units: Sequence[int] | None = None) -> torch.Tensor:
    """Rank `tp_rank`'s slice of dim 0, taken from each fused section in turn (`rank_rows`),
    each padded with zero rows to `local_rows`."""
    if tp_size == 1:
        return full
    units = units or (1,) * len(sections)
    parts = []
    offset = 0
    for size, unit in zip(sections, units):
        start, stop = rank_rows(size, tp_size, tp_rank, unit)
        part = full[offset + start: offset + stop]
        rows = local_rows(size, tp_size, unit)
        if part.shape[0] < rows:
            part = torch.cat([part, part.new_zeros((rows - part.shape[0],) + part.shape[1:])])
        parts.append(part)
        offset += size
    return torch.cat(parts, dim=0).contiguous()


def shard_rows(full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Rank `tp_rank`'s slice of the input-feature dim (dim 1) of a row-parallel weight. Its
    quantized tensors split the same way (packed int4 columns and per-group scales and zeros
    line up with the columns they cover); per-output-channel scales (1-D) are whole on every
    rank, since each rank's partial sum uses the same row scale."""
    if tp_size == 1 or full.dim() == 1:
        return full
    step = full.shape[1] // tp_size
    return full[:, tp_rank * step:(tp_rank + 1) * step].contiguous()


class ColumnParallelLinear(nn.Module):
    """y = x W^T (+ b) for this rank's output features; `sections` are the fused parts' full
    sizes, `units` the rows each splits in (`local_rows`; 1 each by default)."""

    def __init__(self, in_features: int, sections: Sequence[int], bias: bool,
                 parallel: ParallelContext = SINGLE_RANK, quant: WeightQuant | None = None,
                 units: Sequence[int] | None = None):
        super().__init__()
        self.sections = tuple(sections)
        units = units or (1,) * len(self.sections)
        self.local_sections = tuple(local_rows(s, parallel.tp_size, u)
                                    for s, u in zip(sections, units))
        self.quant = quant
        self.tp_size = parallel.tp_size
        out_local = sum(self.local_sections)
        if quant is None:
            self.weight = nn.Parameter(torch.empty(out_local, in_features), requires_grad=False)
        else:
            add_quantized_weight(self, quant, out_local, in_features)
        self.bias = nn.Parameter(torch.empty(out_local), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        if self.quant is not None:
            return quantized_linear(self, self.quant, x, self.bias)
        return linear(x, self.weight, self.bias)

    def forward_gate_up(self, x: torch.Tensor | Fp8Rows
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(self(x), gate_amax) for SwiGLU's fused [gate | up] projection: on one rank, where its
        launch can give them, the maxima of |silu(gate) * up| over column blocks, which
        `RowParallelLinear.forward_gate_up` takes for FP8's row scale (else None)."""
        if self.quant is None or self.tp_size != 1:
            return self(x), None
        return quantized_gate_up(self, self.quant, x, self.bias)

    def takes_fp8_rows(self, x: torch.Tensor) -> bool:
        """Whether `forward` would quantize x's rows to e4m3 itself, so that the norm before it
        may hand it `Fp8Rows` instead (quantized_linear.takes_fp8_rows)."""
        return self.quant is not None and takes_fp8_rows(self, self.quant, x)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_r W_r^T) + b: each rank holds a slice of the input features."""

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 parallel: ParallelContext = SINGLE_RANK, quant: WeightQuant | None = None):
        super().__init__()
        self.parallel = parallel
        self.quant = quant
        in_local = in_features // parallel.tp_size
        if quant is None:
            self.weight = nn.Parameter(torch.empty(out_features, in_local), requires_grad=False)
        else:
            add_quantized_weight(self, quant, out_features, in_local)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def _partial(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant is not None:
            return quantized_linear(self, self.quant, x, row_max=self._row_max())
        return linear(x, self.weight)

    def _row_max(self):
        """The all-reduce that gives FP8 the whole row's max |x| when ranks hold slices of it."""
        return self.parallel.all_reduce_max if self.parallel.tp_size > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.parallel.all_reduce(self._partial(x))
        return y + self.bias if self.bias is not None else y

    def forward_gate_up(self, gate_up: torch.Tensor,
                        gate_amax: torch.Tensor | None = None) -> torch.Tensor:
        """self(silu(gate) * up) for gate_up = [gate | up], SwiGLU's down projection, with the
        activation folded into the GEMV at decode; `gate_amax` is what the gate_up projection's
        `forward_gate_up` gave beside gate_up."""
        if self.quant is None:
            y = self.parallel.all_reduce(silu_mul_linear(gate_up, self.weight))
        elif self.parallel.tp_size == 1 and forms_gate_up(self, self.quant, gate_up):
            y = self.parallel.all_reduce(quantized_linear(self, self.quant, gate_up, gated=True,
                                                          gate_amax=gate_amax))
        else:
            return self.forward(_silu_and_mul(gate_up))
        return y + self.bias if self.bias is not None else y
