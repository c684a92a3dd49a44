"""Launch shapes of the paged attention kernels (paged_attention.py): how prefill and decode
tile their work, the defaults each takes unless told otherwise, and decode's split count. The
benchmarks sweep these (bench/bench_attention.py, bench_prefill_attention.py); the defaults
are what the sweeps found fastest.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton


def _check_launch_shape(block_n: int, num_warps: int, num_stages: int) -> None:
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    if num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16, got {num_warps}")
    if not 1 <= num_stages <= 8:
        raise ValueError(f"num_stages must be in 1..8, got {num_stages}")


@dataclass(frozen=True)
class PrefillConfig:
    """How a prefill launch tiles its work: query rows (`block_m`) and keys (`block_n`) per
    tile, warps and pipeline depth per program, and whether the heaviest query tiles (the last
    rows of a causal prompt) are launched first."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    heavy_first: bool = False

    def __post_init__(self):
        if self.block_m < 16 or self.block_m & (self.block_m - 1):
            raise ValueError(f"block_m must be a power of two >= 16, got {self.block_m}")
        _check_launch_shape(self.block_n, self.num_warps, self.num_stages)

    def __str__(self) -> str:
        return (f"m{self.block_m} n{self.block_n} w{self.num_warps} s{self.num_stages}"
                + (" heavy-first" if self.heavy_first else ""))


# Past this many query rows, 128 x 128 tiles on 8 warps in three stages were 9% faster than
# 64 x 64 tiles (4096-token prompt, H200; bench/bench_prefill_attention.py, run 19c); shorter
# runs were as fast or slower with them. They ran in bf16 within the H200's 227 KB of shared
# memory per program; in float32 they asked for 263 KB and failed (run 19e). So only 16-bit types
# take them, on GPUs that offer what the H200 does.
LONG_PREFILL_ROWS = 2048
LONG_PREFILL_SHARED_BYTES = 224 << 10


def default_prefill_config(head_dim: int, max_query_len: int, shared_bytes_per_block: int = 0,
                           element_bytes: int = 2) -> PrefillConfig:
    """The launch shape prefill uses unless told otherwise: 16-row tiles for short query runs
    (chunks of a few tokens, decode rows), 64 x 64 tiles otherwise (32-key tiles past 128
    dims, to stay within the registers), 128 x 128 for long 16-bit prompts where the GPU's
    shared memory holds them; the heaviest tiles of a causal prompt first."""
    if (max_query_len >= LONG_PREFILL_ROWS and head_dim <= 128 and element_bytes <= 2
            and shared_bytes_per_block >= LONG_PREFILL_SHARED_BYTES):
        return PrefillConfig(block_m=128, block_n=128, num_warps=8, num_stages=3,
                             heavy_first=True)
    return PrefillConfig(block_m=64 if max_query_len > 32 else 16,
                         block_n=64 if head_dim <= 128 else 32, heavy_first=True)


def shared_bytes_per_block(device: torch.device) -> int:
    """Shared memory one program may use on `device` (0 off CUDA: Triton's interpreter)."""
    return _cuda_shared_bytes(device.index or 0) if device.type == "cuda" else 0


@functools.lru_cache(maxsize=None)
def _cuda_shared_bytes(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    return getattr(props, "shared_memory_per_block_optin", 0)


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_context: int,
                      num_sms: int = 132) -> int:
    """Splits per sequence so that about four programs per SM run, for contexts long enough to
    split; a power of two in [1, 32]. Depends only on launch-time constants (graph-safe)."""
    wanted = max(1, math.ceil(4 * num_sms / max(1, num_seqs * num_kv_heads)))
    by_length = max(1, max_context // 128)
    return min(32, triton.next_power_of_2(min(wanted, by_length)))


@dataclass(frozen=True)
class DecodeConfig:
    """How a decode launch tiles its work: keys per loop iteration (`block_n`), warps and
    pipeline depth per program, and the fewest keys a split takes (`min_split_keys`, rounded
    up to whole tiles): a context of at most that many runs in one program with no merge,
    and longer ones in fewer, longer splits."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    min_split_keys: int = 0

    def __post_init__(self):
        _check_launch_shape(self.block_n, self.num_warps, self.num_stages)
        if not 0 <= self.min_split_keys <= 1 << 20:
            raise ValueError(f"min_split_keys must be in 0..{1 << 20}, got "
                             f"{self.min_split_keys}")

    def __str__(self) -> str:
        return (f"n{self.block_n} w{self.num_warps} s{self.num_stages}"
                + (f" min{self.min_split_keys}" if self.min_split_keys else ""))


# Splits of at least this many keys once a decode launch has this many (sequence, kv head)
# programs per SM without splitting. Per layer with Llama-3-8B heads on an H100 (bench/NOTES.md,
# run 25b): 64 sequences of 140 / 200 tokens 22.5 -> 19.0 / 27.9 -> 25.0 us (bf16 cache), 28.2
# -> 27.0 / 35.4 -> 33.6 (fp8), and 1152 tokens or 256 sequences unchanged; at batch 1 (8
# programs) every floor was slower (200 tokens: 5.5 -> 7.8 us), as one program walks the keys
# that splits read side by side.
FULL_LAUNCH_MIN_SPLIT_KEYS = 256
FULL_LAUNCH_PROGRAMS_PER_SM = 3


# An 8-bit cache's loop is bound by instruction issue (bench/NOTES.md): at 256 sequences of 1152
# tokens over an fp8 cache (H100, run 25c) 32-key tiles on one warp took 288.8 us a layer against
# 395.2 for the 16-bit default; the sweep's best, as the offline SASS counts foretold. Run 25d
# over fp8, us a layer, 16-bit default -> these tiles: 64 x 140 28.2 -> 16.7, 64 x 1152 113.4 ->
# 75.8, 256 x 160 77.1 -> 47.6, 256 x 1152 395.2 -> 283.5, with splits of any length: longer
# splits only lost (64 x 140: 20.3 at 256 keys or more).
FULL_LAUNCH_8BIT = dict(block_n=32, num_warps=1, num_stages=2, min_split_keys=0)


def default_decode_config(group: int, head_dim: int, programs: int = 0,
                          num_sms: int = 132, eight_bit: bool = False) -> DecodeConfig:
    """The launch shape decode uses unless told otherwise. With one query row per kv head,
    16-key tiles on two warps were the fastest or within 1% of it at every batch-1, 64- and
    256-stream load bench/bench_attention.py timed on an H100 (6-12% faster than 64-key tiles
    on four warps at contexts that leave the last tile part empty); grouped heads keep the
    64-key tile. A launch of `programs` (sequence, kv head) pairs that fills the GPU several
    times over takes splits of at least FULL_LAUNCH_MIN_SPLIT_KEYS keys, and with grouped
    heads over an int8 / fp8 cache (`eight_bit`) the narrow tiles of FULL_LAUNCH_8BIT."""
    full = programs >= FULL_LAUNCH_PROGRAMS_PER_SM * num_sms
    min_split_keys = FULL_LAUNCH_MIN_SPLIT_KEYS if full else 0
    if full and eight_bit and group > 1 and head_dim <= 128:      # measured with GQA heads
        return DecodeConfig(**FULL_LAUNCH_8BIT)
    if group == 1 and head_dim <= 128:
        return DecodeConfig(block_n=16, num_warps=2, num_stages=2, min_split_keys=min_split_keys)
    return DecodeConfig(block_n=64 if head_dim <= 128 else 32, min_split_keys=min_split_keys)


def multiprocessor_count(device: torch.device) -> int:
    """SMs of `device`; 1 off CUDA (Triton's interpreter runs one program at a time)."""
    return _cuda_sm_count(device.index or 0) if device.type == "cuda" else 1


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count
