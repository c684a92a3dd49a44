"""CUDA graphs for decode steps: forward pass and logits captured once per batch size.

A decode step launches several hundred small kernels; replaying a captured graph removes their
launch cost, which at batch 1 is of the order of the whole weight-streaming time. Graphs read
their inputs from fixed device buffers, so a step writes its token ids, positions, slots,
context lengths and block tables into a pinned host buffer and copies it to the device in a
single transfer before the replay. Two host buffers take turns: while step n's copy may still be
queued behind step n-1, step n+1 is written into the other one. A batch of n sequences replays the smallest captured size
>= n; padding rows write no KV (slot -1), attend over one token of block 0 and are never sampled.

Requires the Triton attention backend (its decode launch depends only on the batch size) and a
rope whose frequencies do not depend on the sequence length (not dynamic NTK).
"""

from __future__ import annotations

import functools
import gc
import logging

import torch

from runtime_service.model.layers.attention import AttentionMetadata
from runtime_service.model.layers.linear import gemv_rows_up_to
from runtime_service.model.llama import LlamaModel

log = logging.getLogger("kiln.cuda_graphs")


def capture_graphs(forwards, graphs: dict, outputs: dict, pool=None):
    """Captures `forward()` for each (key, forward) in order into graphs[key], its output tensor
    into outputs[key], all in one memory pool (`pool`, or a new one); returns the pool.

    Each forward runs twice first on a side stream (compiling and tuning its kernels: nothing
    may compile or time during capture). The outputs stay referenced, so a later capture in the
    pool never reuses their memory, while temporaries are shared: the graphs replay one at a
    time on one stream. A garbage collection during capture can free another engine's graphs or
    pinned buffers, CUDA calls that invalidate the capture, so it is held off until the end.
    The runner may compile every graph's kernels together before the first capture
    (`compile_graph_kernels_ahead`)."""
    forwards = list(forwards)
    stream = torch.cuda.Stream()
    gc.collect()
    gc.disable()
    try:
        for key, forward in forwards:
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                outputs[key] = forward()
            pool = graph.pool()
            graphs[key] = graph
    finally:
        gc.enable()
    torch.cuda.synchronize()
    return pool


class GraphInputs:
    """A graph's int64 inputs: one device buffer, filled by a single copy from a pinned host
    buffer. Two host buffers take turns, so the next step is written into one while the last
    step's copy out of the other may still be queued. `split(buffer)` cuts a buffer (the host's
    as numpy, the device's as a tensor) into the named views its graph reads."""

    def __init__(self, fields: int, split, device: torch.device):
        self._hosts = [torch.zeros(fields, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self._host_views_of = [split(h.numpy()) for h in self._hosts]
        self._turn = 0
        self.device = torch.zeros(fields, dtype=torch.int64, device=device)
        self.device_views = split(self.device)

    @property
    def host_views(self):
        return self._host_views_of[self._turn]

    def next_turn(self):
        """Switches host buffers; returns the views of the one to write now."""
        self._turn ^= 1
        return self.host_views

    def upload(self, used: int | None = None, non_blocking: bool = True) -> None:
        """Copies the first `used` fields (all by default) of this turn's host buffer."""
        host = self._hosts[self._turn]
        if used is None:
            self.device.copy_(host, non_blocking=non_blocking)
        else:
            self.device[:used].copy_(host[:used], non_blocking=non_blocking)


def default_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch_size (and max_batch_size itself)."""
    sizes = [n for n in (1, 2, 4, 8) if n <= max_batch_size]
    sizes += list(range(16, max_batch_size + 1, 16))
    if max_batch_size not in sizes:
        sizes.append(max_batch_size)
    return sorted(set(sizes))


class DecodeGraphs:
    def __init__(self, model: LlamaModel, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                 block_size: int, max_blocks_per_seq: int, batch_sizes: list[int],
                 device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.batch_sizes = sorted(batch_sizes)
        self.max_batch_size = self.batch_sizes[-1]
        self.width = max_blocks_per_seq
        n = self.max_batch_size
        fields = 4 * n + n * self.width
        self._inputs = GraphInputs(fields, self._split, device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._logits: dict[int, torch.Tensor] = {}
        self.pool = None      # the graphs' memory pool, which the prefill graphs share

    def _split(self, buf):
        n = self.max_batch_size
        ids, positions, slots, seq_lens = (buf[i * n:(i + 1) * n] for i in range(4))
        tables = buf[4 * n:].reshape(n, self.width)
        return ids, positions, slots, seq_lens, tables

    def _fill_padding(self, start: int) -> None:
        ids, positions, slots, seq_lens, tables = self._inputs.host_views
        ids[start:] = 0
        positions[start:] = 0
        slots[start:] = -1
        seq_lens[start:] = 1
        tables[start:, 0] = 0

    def _meta(self, batch_size: int) -> AttentionMetadata:
        _, positions, slots, seq_lens, tables = self._inputs.device_views
        return AttentionMetadata(
            positions=positions[:batch_size],
            slot_mapping=slots[:batch_size],
            query_start=torch.arange(batch_size + 1, dtype=torch.int32,
                                     device=self._inputs.device.device),
            seq_lens=seq_lens[:batch_size],
            block_tables=tables[:batch_size],
            token_seq_lens=seq_lens[:batch_size],
            query_lens_host=[1] * batch_size,
            seq_lens_host=[1] * batch_size,
            block_size=self.block_size,
        )

    def _forward(self, batch_size: int, meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.model(self._inputs.device_views[0][:batch_size], meta, self.kv_caches)
        return self.model.compute_logits(hidden)

    def forwards(self) -> list:
        """(batch size, forward) for each graph, largest first, over padding inputs (filled
        here): what `capture` captures, and what compiling ahead records."""
        self._fill_padding(0)
        self._inputs.upload(non_blocking=False)
        rows = self.max_batch_size

        def forward(size: int, meta: AttentionMetadata):
            with gemv_rows_up_to(rows):     # the GEMVs take every batch size of the graphs
                return self._forward(size, meta)

        return [(size, functools.partial(forward, size, self._meta(size)))
                for size in reversed(self.batch_sizes)]

    @torch.inference_mode()
    def capture(self) -> None:
        """Warms up (compiles the kernels) and captures every batch size, largest first so the
        smaller graphs reuse its memory pool."""
        self.pool = capture_graphs(self.forwards(), self._graphs, self._logits)
        log.info("captured decode graphs for batch sizes %s", self.batch_sizes)

    def graph_size_for(self, num_seqs: int) -> int | None:
        for size in self.batch_sizes:
            if size >= num_seqs:
                return size
        return None

    def run(self, rows: list[tuple[int, int, int, list[int]]], patch_ids=None) -> torch.Tensor:
        """rows: (token_id, position, slot, block_ids) per sequence -> float32 logits [n, V].
        `patch_ids(ids)`, if given, rewrites the device's token-id input before the replay.

        The logits are a view of the graph's output buffer, valid until the next replay."""
        num_seqs = len(rows)
        size = self.graph_size_for(num_seqs)
        ids, positions, slots, seq_lens, tables = self._inputs.next_turn()
        for i, (token_id, position, slot, block_ids) in enumerate(rows):
            ids[i] = token_id
            positions[i] = position
            slots[i] = slot
            seq_lens[i] = position + 1
            tables[i, :len(block_ids)] = block_ids
        self._fill_padding(num_seqs)
        used = 4 * self.max_batch_size + size * self.width
        self._inputs.upload(used)
        if patch_ids is not None:
            patch_ids(self._inputs.device_views[0])
        self._graphs[size].replay()
        return self._logits[size][:num_seqs]


@torch.inference_mode()
def compile_graph_kernels_ahead(make_forwards) -> int:
    """Has every kernel that the forwards `make_forwards()` returns ((key, forward) pairs: all
    the graphs' and the eager step's after them) will launch compile together before the first
    capture, where the pod started compile workers (kernels/compile_ahead.py); returns how many
    were recorded (0: compiling ahead is off, and each compiles when first launched)."""
    from runtime_service.model.kernels import compile_ahead

    if not compile_ahead.enabled():
        return 0
    return compile_ahead.precompile_forwards(make_forwards())
