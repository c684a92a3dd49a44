"""Paged-KV block tables for kernel tests: each sequence gets consecutive blocks, in order."""

from __future__ import annotations

import torch


def consecutive_block_tables(seq_lens: list[int], block_size: int, first_block: int = 1,
                             spare_columns: int = 1) -> tuple[torch.Tensor, int]:
    """(int32 tables [len(seq_lens), most blocks + spare_columns], -1 past each sequence's
    blocks; the number of blocks handed out). Blocks start at `first_block`: by default block 0
    is left unused, so a kernel that reads a padded entry or slot 0 reads no sequence's keys.
    A spare column checks that a kernel stops at a sequence's length, not at the table's end."""
    counts = [-(-n // block_size) for n in seq_lens]
    tables = torch.full((len(seq_lens), max(counts) + spare_columns), -1, dtype=torch.int32)
    used = 0
    for i, count in enumerate(counts):
        tables[i, :count] = torch.arange(used, used + count) + first_block
        used += count
    return tables, used
