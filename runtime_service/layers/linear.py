"""Linear layers and the tensor-parallel sharding rules, written once for builder and runtime.

A column-parallel layer splits its output features over ranks (each fused section separately, so
rank r of a fused QKV holds its own q, k and v heads); a row-parallel layer splits its input
features and all-reduces the partial sums. The builder calls `shard_columns` / `shard_rows` when it
writes rank files; the runtime loads those shards straight into these modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from runtime_service.distributed import SINGLE_RANK, ParallelContext


def shard_columns(full: torch.Tensor, sections: Sequence[int], tp_rank: int,
                  tp_size: int) -> torch.Tensor:
    """Rank `tp_rank`'s slice of dim 0, taken from each fused section in turn."""
    if tp_size == 1:
        return full
    parts = []
    offset = 0
    for size in sections:
        step = size // tp_size
        parts.append(full[offset + tp_rank * step: offset + (tp_rank + 1) * step])
        offset += size
    return torch.cat(parts, dim=0).contiguous()


def shard_rows(full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Rank `tp_rank`'s slice of the input-feature dim (dim 1) of a row-parallel weight."""
    if tp_size == 1:
        return full
    step = full.shape[1] // tp_size
    return full[:, tp_rank * step:(tp_rank + 1) * step].contiguous()


class ColumnParallelLinear(nn.Module):
    """y = x W^T (+ b) for this rank's output features; `sections` are the fused parts' full sizes."""

    def __init__(self, in_features: int, sections: Sequence[int], bias: bool,
                 parallel: ParallelContext = SINGLE_RANK):
        super().__init__()
        self.sections = tuple(sections)
        self.local_sections = tuple(s // parallel.tp_size for s in sections)
        out_local = sum(self.local_sections)
        self.weight = nn.Parameter(torch.empty(out_local, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_local), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_r W_r^T) + b: each rank holds a slice of the input features."""

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 parallel: ParallelContext = SINGLE_RANK):
        super().__init__()
        self.parallel = parallel
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features // parallel.tp_size), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.parallel.all_reduce(nn.functional.linear(x, self.weight))
        return y + self.bias if self.bias is not None else y
