"""KV-cache block accounting: a pool of fixed-size blocks, block tables, sharing and prefix reuse.

Pure Python, no torch: the tensors that hold keys and values live in the model runner, indexed by
the block ids handed out here. A block may be held by several sequences (beams forked from one
parent, requests with a common prefix): it carries a reference count and returns to the pool
when the last holder lets go. Writing into a shared block first copies it (copy on write); the
copies to perform are queued in `pending_copies` for the runner.

Prefix reuse: each full, computed block gets a hash chained from its predecessor's, seeded by a
salt (the engine's identity plus the request's cache salt), so identical prefixes in the same
engine and salt find the same blocks. Free blocks that still hold a hashed prefix stay findable
until the pool needs them (least recently freed first).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from runtime_service.errors import InvalidRequest
from runtime_service.engine.sequence import Sequence


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


@dataclass(frozen=True)
class AttentionWindow:
    """StreamingLLM: the first `sink_tokens` stay, then only the last `window_tokens` (both
    rounded up to whole blocks). With `rotate_in_cache`, rotary positions are positions within
    the cache, so keys are re-rotated when the window slides."""

    sink_tokens: int
    window_tokens: int
    rotate_in_cache: bool = True

    def __post_init__(self):
        if self.sink_tokens < 0 or self.window_tokens < 1:
            raise InvalidRequest(
                f"sink_token_length must be >= 0 and max_attention_window >= 1, got "
                f"{self.sink_tokens} and {self.window_tokens}")


def chain_hash(parent: bytes, token_ids: list[int]) -> bytes:
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_reuse: bool = False,
                 engine_salt: str = "", window: AttentionWindow | None = None):
        if num_blocks < 1 or block_size < 1:
            raise InvalidRequest(
                f"KV cache needs at least one block of at least one token, got {num_blocks} "
                f"blocks of {block_size}")
        self.num_total_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_reuse = enable_prefix_reuse
        self.engine_salt = engine_salt.encode()
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._ref_count = [0] * num_blocks
        self._hash_of_block: dict[int, bytes] = {}
        self._block_of_hash: dict[bytes, int] = {}
        self._holders: dict[str, Sequence] = {}
        self.pending_copies: list[tuple[int, int]] = []
        self.window = window
        if window is not None:
            if enable_prefix_reuse:
                raise InvalidRequest("block reuse does not combine with a sliding attention window")
            self.sink_blocks = blocks_for_tokens(window.sink_tokens, block_size)
            self.window_blocks = blocks_for_tokens(window.window_tokens, block_size)
        self.pending_rotations: list[tuple[tuple[int, ...], int]] = []   # (blocks, shift)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_live_sequences(self) -> int:
        """Sequences that hold at least one block."""
        return len(self._holders)

    def ref_count(self, block_id: int) -> int:
        return self._ref_count[block_id]

    # ---- growing and freeing ---------------------------------------------------------------

    def num_new_blocks(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks `seq` must gain (new ones and copies of shared ones) for `num_new_tokens`."""
        return self._growth(seq, num_new_tokens) + len(self._shared_blocks_to_write(
            seq, num_new_tokens))

    def _growth(self, seq: Sequence, num_new_tokens: int) -> int:
        needed = blocks_for_tokens(seq.num_cached_positions + num_new_tokens, self.block_size)
        return max(0, needed - len(seq.block_ids))

    def _shared_blocks_to_write(self, seq: Sequence, num_new_tokens: int) -> list[int]:
        """Indices into seq.block_ids of already-held blocks that this step writes but shares."""
        if num_new_tokens == 0:
            return []
        first = seq.num_cached_positions // self.block_size
        last = min(len(seq.block_ids),
                   blocks_for_tokens(seq.num_cached_positions + num_new_tokens, self.block_size))
        return [i for i in range(first, last) if self._ref_count[seq.block_ids[i]] > 1]

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Makes room for `num_new_tokens` more computed tokens; False (no change) if short.
        Runs for every scheduled sequence every step, so the shared blocks are found once."""
        shared = self._shared_blocks_to_write(seq, num_new_tokens)
        if self._growth(seq, num_new_tokens) + len(shared) > len(self._free):
            return False
        for index in shared:
            source = seq.block_ids[index]
            copy = self._take_free_block()
            self._release(source)
            seq.block_ids[index] = copy
            self.pending_copies.append((source, copy))
        needed = blocks_for_tokens(seq.num_cached_positions + num_new_tokens, self.block_size)
        while len(seq.block_ids) < needed:
            seq.block_ids.append(self._take_free_block())
        if seq.block_ids:
            self._holders[seq.request_key] = seq
        return True

    def free(self, seq: Sequence) -> None:
        """Drops `seq`'s hold on all its blocks; safe to call twice."""
        for block in seq.block_ids:
            self._release(block)
        seq.block_ids = []
        seq.num_evicted_tokens = 0
        seq.block_hashes = []
        self._holders.pop(seq.request_key, None)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Gives `child` the same blocks as `parent` (shared, copied on first write)."""
        self.free(child)
        child.block_ids = list(parent.block_ids)
        child.block_hashes = list(parent.block_hashes)
        for block in child.block_ids:
            self._ref_count[block] += 1
        if child.block_ids:
            self._holders[child.request_key] = child

    def reassign(self, seqs: list[Sequence], parents: list[int]) -> None:
        """Beam step: sequence i takes the block table of sequence parents[i] (shared)."""
        old_tables = [list(s.block_ids) for s in seqs]
        old_hashes = [list(s.block_hashes) for s in seqs]
        for seq, parent in zip(seqs, parents):
            seq.block_ids = list(old_tables[parent])
            seq.block_hashes = list(old_hashes[parent])
            for block in seq.block_ids:
                self._ref_count[block] += 1
            if seq.block_ids:
                self._holders[seq.request_key] = seq
        for table in old_tables:
            for block in table:
                self._release(block)

    def max_blocks_per_sequence(self, max_total_tokens: int) -> int:
        """The most blocks one sequence can hold at once: bounded by the window when set."""
        blocks = blocks_for_tokens(max_total_tokens, self.block_size)
        if self.window is None:
            return blocks
        return min(blocks, self.sink_blocks + self.window_blocks + 1)

    def slide_window(self, seq: Sequence) -> None:
        """Drops the oldest full blocks past the sink once the window holds more than its size;
        queues the re-rotation of the blocks that moved down in the cache."""
        if self.window is None:
            return
        full_blocks = seq.num_cached_positions // self.block_size
        while full_blocks > self.sink_blocks + self.window_blocks:
            self._release(seq.block_ids.pop(self.sink_blocks))
            seq.num_evicted_tokens += self.block_size
            full_blocks -= 1
            if self.window.rotate_in_cache:
                self.pending_rotations.append(
                    (tuple(seq.block_ids[self.sink_blocks:]), self.block_size))

    def take_pending_rotations(self) -> list[tuple[tuple[int, ...], int]]:
        rotations, self.pending_rotations = self.pending_rotations, []
        return rotations

    def take_pending_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies

    def _take_free_block(self) -> int:
        block, _ = self._free.popitem(last=False)
        old_hash = self._hash_of_block.pop(block, None)
        if old_hash is not None and self._block_of_hash.get(old_hash) == block:
            del self._block_of_hash[old_hash]
        self._ref_count[block] = 1
        return block

    def _release(self, block: int) -> None:
        self._ref_count[block] -= 1
        if self._ref_count[block] == 0:
            self._free[block] = None
            if block not in self._hash_of_block:
                self._free.move_to_end(block, last=False)   # reuse blank blocks first

    # ---- prefix reuse ----------------------------------------------------------------------

    def _root_hash(self, seq: Sequence) -> bytes:
        return hashlib.blake2b(self.engine_salt + b"\0" + seq.cache_salt.encode(),
                               digest_size=16).digest()

    def claim_cached_prefix(self, seq: Sequence) -> int:
        """For a sequence with nothing computed, takes the longest run of cached full blocks of
        its tokens (always leaving one token to compute); returns the tokens reused."""
        if (not self.enable_prefix_reuse or seq.num_computed_tokens or seq.block_ids
                or seq.wants_prompt_logits):      # those need every prompt position's logits
            return 0
        usable_blocks = (seq.num_tokens - 1) // self.block_size
        parent = self._root_hash(seq)
        hashes, blocks = [], []
        for i in range(usable_blocks):
            tokens = seq.token_ids[i * self.block_size:(i + 1) * self.block_size]
            parent = chain_hash(parent, tokens)
            block = self._block_of_hash.get(parent)
            if block is None:
                break
            hashes.append(parent)
            blocks.append(block)
        for block in blocks:
            if self._ref_count[block] == 0:
                del self._free[block]
            self._ref_count[block] += 1
        seq.block_ids = blocks
        seq.block_hashes = hashes
        reused = len(blocks) * self.block_size
        seq.num_computed_tokens = reused
        seq.num_cached_tokens = reused
        if blocks:
            self._holders[seq.request_key] = seq
        return reused

    def register_computed_blocks(self, seq: Sequence) -> None:
        """Publishes `seq`'s newly full, computed blocks so later requests can reuse them."""
        if not self.enable_prefix_reuse:
            return
        # A pending token (sampled, not yet read back) is computed but unknown: not hashed yet.
        known = min(seq.num_computed_tokens, seq.num_tokens)
        full = min(known // self.block_size, len(seq.block_ids))
        parent = seq.block_hashes[-1] if seq.block_hashes else self._root_hash(seq)
        for i in range(len(seq.block_hashes), full):
            tokens = seq.token_ids[i * self.block_size:(i + 1) * self.block_size]
            parent = chain_hash(parent, tokens)
            seq.block_hashes.append(parent)
            block = seq.block_ids[i]
            if parent not in self._block_of_hash and block not in self._hash_of_block:
                self._block_of_hash[parent] = block
                self._hash_of_block[block] = parent
