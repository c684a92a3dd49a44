"""How the runtime serves an engine: KV cache sizing, the capacity policy and StreamingLLM.

These travel to the runtime in LoadEngine's RuntimeOptions; a runtime that cannot honour one
(StreamingLLM before the KV cache has sink tokens, for instance) refuses the load with
FAILED_PRECONDITION rather than serving without it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kiln._checks import Checked, boolean, integer, number


class CapacitySchedulerPolicy(str, enum.Enum):
    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    MAX_UTILIZATION = "MAX_UTILIZATION"


@dataclass(slots=True)
class KvCacheConfig(Checked):
    """max_tokens bounds the KV pool; free_gpu_memory_fraction sizes it on a GPU;
    max_new_tokens is the most new tokens one request may ask for (the runtime refuses more)."""

    max_tokens: int | None = None
    max_new_tokens: int | None = None
    free_gpu_memory_fraction: float | None = None
    max_attention_window: int | None = None
    sink_token_length: int | None = None
    enable_block_reuse: bool = False


KvCacheConfig._checks = {"max_tokens": integer(1, 1 << 40, optional=True),
                         "max_new_tokens": integer(1, 1 << 20, optional=True),
                         "free_gpu_memory_fraction": number(0.0, 1.0, optional=True,
                                                            low_open=True),
                         "max_attention_window": integer(1, 1 << 24, optional=True),
                         "sink_token_length": integer(0, 1 << 16, optional=True),
                         "enable_block_reuse": boolean}


@dataclass(slots=True)
class StreamingLLMParam(Checked):
    """StreamingLLM: keep `sink_token_length` first tokens plus a sliding window."""

    max_attention_window_size: int = 1024
    sink_token_length: int = 4


StreamingLLMParam._checks = {"max_attention_window_size": integer(1, 1 << 24),
                             "sink_token_length": integer(0, 1 << 16)}
