"""The executor's settings and counters: what a runtime pod is started with, and what it reports.

Kept apart from the step loop so servers, the CLI and tests can build and validate options
without importing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime_service.errors import InvalidRequest
from runtime_service.engine.scheduler import SchedulerPolicy

# layers/attention_triton.make_attention_backend builds each of these
ATTENTION_BACKENDS = ("auto", "torch", "triton", "triton-flash")

# Prefills of one prompt of up to this many tokens replay a captured graph (prefill_graphs.py).
DEFAULT_PREFILL_GRAPH_TOKENS = 2048


@dataclass(frozen=True)
class ExecutorOptions:
    """Serving settings chosen at start; None means "take it from the engine's build limits"."""

    device: str = "cpu"
    dtype: str | None = None
    block_size: int = 16
    kv_max_tokens: int | None = None
    kv_free_gpu_memory_fraction: float = 0.9
    max_batch_size: int | None = None
    max_num_tokens: int | None = None
    policy: SchedulerPolicy = SchedulerPolicy.GUARANTEED_NO_EVICT
    enable_chunked_prefill: bool = True
    enable_block_reuse: bool = False
    # A sliding attention window keeps the first sink_token_length tokens and the last
    # max_attention_window; with streaming_llm, rotary positions are positions in the cache
    # (StreamingLLM), so a stream can run far past max_seq_len in bounded memory.
    max_attention_window: int | None = None
    sink_token_length: int = 0
    streaming_llm: bool = False
    max_queue_size: int = 1024
    load_tokenizer: bool = True
    # "auto": the Triton kernels on CUDA (on Hopper with torch's fused attention for a prefill
    # step of one sequence of at least 512 tokens), the torch reference elsewhere; or "torch" /
    # "triton"; "triton-flash": the Triton kernels, with torch's fused attention for every
    # prefill step of one sequence (layers/attention_triton.py, kernels/flash_prefill.py).
    attention_backend: str = "auto"
    # Decode steps of up to this many sequences replay captured CUDA graphs (None: up to
    # max_batch_size on CUDA; 0: never). CUDA with the Triton backend only.
    cuda_graph_max_batch_size: int | None = None
    # A step that prefills one prompt of up to this many tokens (and finishes it) replays a
    # captured graph: a short prompt's first token then waits for the GPU, not for ~300 kernel
    # launches (None: 512, within max_num_tokens; 0 or below 16: never). Only where decode
    # graphs are captured.
    cuda_graph_max_prefill_tokens: int | None = None
    # Schedule and queue step n+1 before step n's tokens reach the host (None: on CUDA only,
    # where the GPU then never waits for the host; on CPU nothing runs concurrently).
    overlap_scheduling: bool | None = None
    # At start, run one step of max_num_tokens prompt tokens (None: on CUDA only), so that the
    # caching allocator holds the largest step's activations before the first request and memory
    # stays flat from then on: without it, the first full-size prefill of a 7B engine grew the
    # reserved memory by ~365 MB mid-serving (bench/NOTES.md, runs 5 and 8).
    warm_up_largest_step: bool | None = None

    def __post_init__(self):
        if self.block_size < 1 or self.block_size > 1024:
            raise InvalidRequest(f"block_size must be in [1, 1024], got {self.block_size}")
        if self.kv_max_tokens is not None and self.kv_max_tokens < self.block_size:
            raise InvalidRequest(
                f"kv_max_tokens must be at least one block ({self.block_size}), got "
                f"{self.kv_max_tokens}")
        if not 0.0 < self.kv_free_gpu_memory_fraction <= 1.0:
            raise InvalidRequest(
                "kv_free_gpu_memory_fraction must be in (0, 1], got "
                f"{self.kv_free_gpu_memory_fraction}")
        if self.max_queue_size < 1:
            raise InvalidRequest(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise InvalidRequest(f"attention_backend must be one of {ATTENTION_BACKENDS}, got "
                                 f"{self.attention_backend!r}")
        if self.cuda_graph_max_batch_size is not None and self.cuda_graph_max_batch_size < 0:
            raise InvalidRequest("cuda_graph_max_batch_size must be >= 0, got "
                                 f"{self.cuda_graph_max_batch_size}")
        if (self.cuda_graph_max_prefill_tokens is not None
                and self.cuda_graph_max_prefill_tokens < 0):
            raise InvalidRequest("cuda_graph_max_prefill_tokens must be >= 0, got "
                                 f"{self.cuda_graph_max_prefill_tokens}")
        object.__setattr__(self, "policy", SchedulerPolicy(self.policy))


@dataclass(frozen=True)
class ExecutorStats:
    num_free_blocks: int
    num_total_blocks: int
    num_live_requests: int
    num_waiting: int
    num_running: int
    num_steps: int
    num_preemptions: int
    peak_running: int              # most sequences ever in one step's running set
    num_overlapped_steps: int = 0  # steps queued before the previous step's tokens were read
