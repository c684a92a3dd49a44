"""What this runtime can load, reported in GetServerInfo so clients refuse doomed builds early.

Kept beside the loader's own refusals: `model/loader.py` loads these quantizations only, and
`server/engine_host.py` refuses engines split over more ranks than MAX_WORLD_SIZE, so an SDK that
asks for W4A16_AWQ or tp_size=16 is told before a build starts rather than after.
tests/unit/runtime_service/server/test_capabilities.py checks these against the loader, so the
list cannot drift silently when quantized layers or ranks land.
"""

# Weight algorithms, then KV cache dtypes as "kv_<dtype>" (the SDK checks both in this list).
LOADABLE_QUANT_ALGOS: tuple[str, ...] = ("NONE", "W4A16", "W4A16_AWQ", "W8A16", "FP8",
                                         "kv_int8", "kv_fp8")
MAX_WORLD_SIZE = 8               # tp x pp ranks (runtime_service/distributed/ranks.py)
STREAMING_LLM = True           # sink tokens + sliding window (kv_cache.AttentionWindow)
BLOCK_REUSE = True             # hashed prefix reuse (ExecutorOptions.enable_block_reuse)
