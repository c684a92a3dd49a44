"""CUDA graphs for the prefill of one short prompt: time to first token without launch costs.

A 128-token prefill of an 8B model is about 4 ms of GPU work, but launching its ~300 kernels one
by one from Python takes longer than that, so a short prompt's time to first token was host time
(bench/NOTES.md, run 7's host profile). A step that prefills one sequence, finishes its prompt
and has at most `max(token_buckets)` new tokens replays a graph captured for the smallest
bucket that holds them; longer prefills keep the GPU busy on their own and run eagerly. The
default reaches 2048 tokens: the eager launch of one prefill takes the host 19-29 ms whatever
its length (runs 15d, 16), as long as the GPU's work up to ~1024 tokens.

The inputs live in one device buffer that a single copy fills from a pinned host buffer (two
take turns, as in the decode graphs). Rows past the prompt are padding: token 0 at position 0,
slot -1 (the KV store skips them), outside the sequence's query rows (attention skips them), and
never sampled: the graph computes the logits of the prompt's last row only.

Same requirements as the decode graphs (cuda_graphs.py), whose memory pool these share.
"""

from __future__ import annotations

import logging

import torch

from runtime_service.model.cuda_graphs import GraphInputs, capture_graphs
from runtime_service.model.layers.attention import AttentionMetadata
from runtime_service.model.llama import LlamaModel

log = logging.getLogger("kiln.cuda_graphs")

SMALLEST_BUCKET = 16
# Past this many tokens the buckets grow by STEP_BUCKET instead of doubling: there a padded row
# costs GPU time (a 1024-token prefill is ~22 ms of GEMMs), so a prompt pads by at most 255
# rows rather than up to its own length.
DOUBLING_UP_TO = 512
STEP_BUCKET = 256


def default_token_buckets(max_tokens: int) -> list[int]:
    """16, 32, 64, ... 512, then 768, 1024, ... below max_tokens, and max_tokens itself
    (none below 16)."""
    buckets, size = [], SMALLEST_BUCKET
    while size < max_tokens:
        buckets.append(size)
        size = size * 2 if size < DOUBLING_UP_TO else size + STEP_BUCKET
    return buckets + [max_tokens] if max_tokens >= SMALLEST_BUCKET else []


class PrefillGraphs:
    def __init__(self, model: LlamaModel, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                 block_size: int, max_blocks_per_seq: int, token_buckets: list[int],
                 device: torch.device):
        if not token_buckets:
            raise ValueError("prefill graphs need at least one token bucket")
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.buckets = sorted(token_buckets)
        self.max_tokens = self.buckets[-1]
        self.width = max_blocks_per_seq
        fields = 4 * self.max_tokens + 4 + self.width
        self._inputs = GraphInputs(fields, self._split, device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._logits: dict[int, torch.Tensor] = {}

    def _split(self, buf):
        """ids, positions, slots, token_seq_lens [max_tokens]; query_start [2]; seq_len [1];
        sample_row [1]; block_table [width]."""
        n = self.max_tokens
        ids, positions, slots, token_seq_lens = (buf[i * n:(i + 1) * n] for i in range(4))
        query_start, seq_len, sample_row = buf[4 * n:4 * n + 2], buf[4 * n + 2:4 * n + 3], \
            buf[4 * n + 3:4 * n + 4]
        return ids, positions, slots, token_seq_lens, query_start, seq_len, sample_row, \
            buf[4 * n + 4:]

    def _meta(self, bucket: int) -> AttentionMetadata:
        _, positions, slots, token_seq_lens, query_start, seq_len, _, table = \
            self._inputs.device_views
        return AttentionMetadata(
            positions=positions[:bucket], slot_mapping=slots[:bucket], query_start=query_start,
            seq_lens=seq_len, block_tables=table.view(1, self.width),
            token_seq_lens=token_seq_lens[:bucket], query_lens_host=[bucket],
            seq_lens_host=[bucket], block_size=self.block_size)

    def _forward(self, bucket: int, meta: AttentionMetadata) -> torch.Tensor:
        views = self._inputs.device_views
        hidden = self.model(views[0][:bucket], meta, self.kv_caches)
        return self.model.compute_logits(hidden.index_select(0, views[6]))

    def _fill(self, host_views, token_ids, positions, slots, token_seq_lens, seq_len: int,
              block_ids) -> None:
        """Writes one prompt chunk into `host_views`, padding to the end."""
        ids_h, pos_h, slots_h, tsl_h, qs_h, seq_len_h, row_h, table_h = host_views
        n = len(token_ids)
        ids_h[:n], pos_h[:n], slots_h[:n], tsl_h[:n] = token_ids, positions, slots, token_seq_lens
        ids_h[n:], pos_h[n:], slots_h[n:], tsl_h[n:] = 0, 0, -1, 1
        qs_h[0], qs_h[1], seq_len_h[0], row_h[0] = 0, n, seq_len, n - 1
        table_h[:len(block_ids)] = block_ids

    def forwards(self) -> list:
        """(bucket, forward) for each bucket, largest first, over padding inputs (filled here):
        a query of one row, one token of context, and block 0."""
        self._fill(self._inputs.host_views, [0], [0], [-1], [1], 1, [0])
        self._inputs.upload(non_blocking=False)
        return [(bucket, lambda bucket=bucket, meta=self._meta(bucket): self._forward(bucket, meta))
                for bucket in reversed(self.buckets)]

    @torch.inference_mode()
    def capture(self, pool=None):
        """Captures every bucket, largest first, in `pool` (the decode graphs'); returns it."""
        pool = capture_graphs(self.forwards(), self._graphs, self._logits, pool)
        log.info("captured prefill graphs for %s tokens", self.buckets)
        return pool

    def bucket_for(self, num_tokens: int) -> int | None:
        for bucket in self.buckets:
            if bucket >= num_tokens:
                return bucket
        return None

    def run(self, inputs, patch_ids=None) -> torch.Tensor:
        """inputs: one sequence's StepInputs (model_runner.py) -> float32 logits [1, V] of its
        last row. `patch_ids(ids)`, if given, rewrites the device's token ids before the replay.

        The logits are a view of the graph's output buffer, valid until the next replay."""
        bucket = self.bucket_for(len(inputs.token_ids))
        blocks = inputs.block_tables[0]
        used = len(blocks)
        while used and blocks[used - 1] < 0:       # the layout's padding, not the sequence's
            used -= 1
        self._fill(self._inputs.next_turn(), inputs.token_ids, inputs.positions,
                   inputs.slot_mapping, inputs.token_seq_lens, inputs.seq_lens[0],
                   blocks[:used])
        self._inputs.upload()
        if patch_ids is not None:
            patch_ids(self._inputs.device_views[0])
        self._graphs[bucket].replay()
        return self._logits[bucket]
