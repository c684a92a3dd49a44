"""KV-cache block accounting: a pool of fixed-size blocks and each sequence's block table.

Pure Python, no torch: the tensors that hold keys and values live in the model runner, indexed by
the block ids handed out here. Blocks return to the pool when a sequence finishes, is aborted or
is preempted; the counters let tests prove that nothing leaks.
"""

from __future__ import annotations

from collections import deque

from runtime_service.errors import InvalidRequest
from runtime_service.sequence import Sequence


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise InvalidRequest(
                f"KV cache needs at least one block of at least one token, got {num_blocks} "
                f"blocks of {block_size}")
        self.num_total_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._holders: dict[str, Sequence] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_live_sequences(self) -> int:
        """Sequences that hold at least one block."""
        return len(self._holders)

    def num_new_blocks(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks `seq` must gain to hold `num_new_tokens` more computed tokens."""
        needed = blocks_for_tokens(seq.num_computed_tokens + num_new_tokens, self.block_size)
        return max(0, needed - len(seq.block_ids))

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grows `seq`'s block table for `num_new_tokens`; False (and no change) if the pool is short."""
        count = self.num_new_blocks(seq, num_new_tokens)
        if count > len(self._free):
            return False
        for _ in range(count):
            seq.block_ids.append(self._free.popleft())
        if seq.block_ids:
            self._holders[seq.request_id] = seq
        return True

    def free(self, seq: Sequence) -> None:
        """Returns all of `seq`'s blocks to the pool; safe to call twice."""
        self._free.extend(seq.block_ids)
        seq.block_ids = []
        self._holders.pop(seq.request_id, None)
