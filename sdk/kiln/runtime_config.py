"""How the runtime serves an engine: KV cache sizing, the capacity policy and StreamingLLM.

These travel to the runtime in LoadEngine's RuntimeOptions; a runtime that cannot honour one
(StreamingLLM before the KV cache has sink tokens, for instance) refuses the load with
FAILED_PRECONDITION rather than serving without it.
"""

from __future__ import annotations

import enum
from dataclasses import KW_ONLY, dataclass

from kiln._checks import Checked, boolean, integer, number


class CapacitySchedulerPolicy(str, enum.Enum):
    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    MAX_UTILIZATION = "MAX_UTILIZATION"


class ContextChunkingPolicy(str, enum.Enum):
    FIRST_COME_FIRST_SERVED = "FIRST_COME_FIRST_SERVED"
    EQUAL_PROGRESS = "EQUAL_PROGRESS"


@dataclass(slots=True)
class KvCacheConfig(Checked):
    """max_tokens bounds the KV pool; free_gpu_memory_fraction sizes it on a GPU. The order is
    the HLAPI's; max_new_tokens (the README's older field: the most new tokens one request may
    ask for, the runtime refuses more) is a keyword."""

    max_tokens: int | None = None
    max_attention_window: int | None = None
    sink_token_length: int | None = None
    free_gpu_memory_fraction: float | None = None
    enable_block_reuse: bool = False
    _: KW_ONLY
    max_new_tokens: int | None = None


KvCacheConfig._checks = {"max_tokens": integer(1, 1 << 40, optional=True),
                         "max_new_tokens": integer(1, 1 << 20, optional=True),
                         "free_gpu_memory_fraction": number(0.0, 1.0, optional=True,
                                                            low_open=True),
                         "max_attention_window": integer(1, 1 << 24, optional=True),
                         "sink_token_length": integer(0, 1 << 16, optional=True),
                         "enable_block_reuse": boolean}


@dataclass(slots=True, unsafe_hash=True)
class StreamingLLMParam(Checked):
    """StreamingLLM: keep `sink_token_length` first tokens plus a sliding window."""

    max_attention_window_size: int = 2048
    sink_token_length: int = 4


StreamingLLMParam._checks = {"max_attention_window_size": integer(1, 1 << 24),
                             "sink_token_length": integer(0, 1 << 16)}
