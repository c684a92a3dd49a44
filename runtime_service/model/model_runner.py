"""Turns a SchedulerOutput into one forward pass and one sampled token per finishing sequence.

Owns the KV-cache tensors (one [num_blocks, block_size, kv_heads, head_dim] pair per layer) and
lays each step's tokens out flat for the attention backend. On CUDA it picks the Triton attention
backend and replays captured CUDA graphs for pure decode steps.

`launch` queues a step on the device and returns at once: the sampled tokens travel back to the
host on their own (`PendingStep.result` waits for them), so the executor can schedule and queue
step n+1 while step n runs. A token that step n sampled and that step n+1 consumes never visits
the host on the way: step n+1's input row is filled on the device from step n's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from runtime_service.model.faults import StepFaults
from runtime_service.model.layers.attention import AttentionMetadata, TorchReferenceAttention
from runtime_service.model.layers.kv_quant import allocate_kv_cache, kv_bytes_per_value
from runtime_service.model.llama import LlamaModel
from runtime_service.model.prefill_graphs import (SMALLEST_BUCKET, PrefillGraphs,
                                                  default_token_buckets)
from runtime_service.model.sampler import build_sampling_batch, is_plain_greedy, sample, sample_greedy
from runtime_service.model.transfer import upload

# Eager steps' block tables are padded to a multiple of this many columns (`layout`).
TABLE_COLUMNS = 16

if TYPE_CHECKING:       # the engine hands its step over as plain data; the model never imports it
    from runtime_service.engine.scheduler import SchedulerOutput
    from runtime_service.engine.sequence import Sequence

CPU_KV_BUDGET_BYTES = 2 << 30    # KV pool on a CPU device, where no free-memory figure exists


@dataclass(frozen=True)
class SampledToken:
    seq: Sequence
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()    # the most likely tokens, when asked for


@dataclass
class StepResult:
    sampled: list[SampledToken] = field(default_factory=list)
    beam_log_probs: dict[str, torch.Tensor] = field(default_factory=dict)   # by request_key


@dataclass
class PendingStep:
    """A launched step: its sampled tokens are being copied to host memory (pinned on CUDA)
    and are readable once `ready` has passed."""

    sampled_seqs: list[Sequence] = field(default_factory=list)
    token_ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None
    ready: torch.cuda.Event | None = None
    beam_log_probs: dict[str, torch.Tensor] = field(default_factory=dict)

    def result(self) -> StepResult:
        """Waits for this step's tokens (only this step's, not later ones) and returns them."""
        result = StepResult(beam_log_probs=self.beam_log_probs)
        if not self.sampled_seqs:
            return result
        if self.ready is not None:
            self.ready.synchronize()
        tops = [()] * len(self.sampled_seqs)
        if self.top_ids is not None:
            ids, values = self.top_ids.tolist(), self.top_logprobs.tolist()
            tops = [tuple(zip(ids[r][:seq.sampling.top_logprobs],
                              values[r][:seq.sampling.top_logprobs]))
                    for r, seq in enumerate(self.sampled_seqs)]
        result.sampled = [SampledToken(seq, t, lp, top) for seq, t, lp, top in zip(
            self.sampled_seqs, self.token_ids.tolist(), self.logprobs.tolist(), tops)]
        return result


@dataclass
class StepInputs:
    """One step's forward inputs as plain lists: rank 0 lays them out and broadcasts them, and
    every rank runs its shard's forward on them."""

    token_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slot_mapping: list[int] = field(default_factory=list)
    token_seq_lens: list[int] = field(default_factory=list)
    query_lens: list[int] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=list)
    block_tables: list[list[int]] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)
    logit_rows: list[int] = field(default_factory=list)     # prompt-scored rows, then sample rows
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    block_rotations: list = field(default_factory=list)
    # (flat row, row of the previous step's samples): inputs still on the device
    pending_rows: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class PromptSpan:
    """Prompt tokens first..last-1 of `seq` are scored from this step's hidden rows `rows`."""

    seq: Sequence
    first: int
    last: int
    rows: slice


def prompt_spans(batch: SchedulerOutput) -> list[PromptSpan]:
    spans, row = [], 0
    for item in batch.scheduled:
        seq, start = item.seq, item.seq.num_computed_tokens
        first = max(start, seq.num_prompt_scored)     # recomputation scores nothing twice
        last = min(start + item.num_new_tokens, seq.num_prompt_tokens - 1)
        if seq.wants_prompt_logits and first < last:
            spans.append(PromptSpan(seq, first, last,
                                    slice(row + first - start, row + last - start)))
        row += item.num_new_tokens
    return spans


def kv_tokens_by_memory(model: LlamaModel, dtype: torch.dtype, device: torch.device,
                        gpu_memory_fraction: float) -> int:
    """How many tokens of this rank's KV cache fit: a share of free GPU memory, or the CPU
    budget."""
    per_token = kv_bytes_per_token(model, dtype)
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return int(free_bytes * gpu_memory_fraction) // per_token
    return CPU_KV_BUDGET_BYTES // per_token


def kv_bytes_per_token(model: LlamaModel, dtype: torch.dtype) -> int:
    args, parallel = model.args, model.parallel
    kv_heads = args.kv_heads_per_rank(parallel.tp_size)
    element = kv_bytes_per_value(model.kv_cache_dtype, dtype, args.head_dim)
    return int(2 * len(model.layer_ids) * kv_heads * args.head_dim * element)


def padded_tables(tables: list[list[int]]) -> list[list[int]]:
    """Block tables padded with -1 to a whole number of TABLE_COLUMNS: the width is the
    attention kernels' row stride, an integer Triton specializes on its divisibility by 16, so
    a step of another width would compile them again while serving (the warm-up's largest step
    compiles this one)."""
    width = -(-max(len(t) for t in tables) // TABLE_COLUMNS) * TABLE_COLUMNS
    return [t + [-1] * (width - len(t)) for t in tables]


def cache_slots(block_ids: list[int], block_size: int, start: int, end: int) -> list[int]:
    """The KV cache slots of cache positions [start, end) of a sequence holding `block_ids`:
    one range per block touched, not a Python step per token (86 against 150 us for 1024
    tokens on the CI CPU)."""
    slots: list[int] = []
    for index in range(start // block_size, (end + block_size - 1) // block_size):
        base = block_ids[index] * block_size - index * block_size
        slots.extend(range(base + max(start, index * block_size),
                           base + min(end, (index + 1) * block_size)))
    return slots


class ModelRunner:
    """`attention`: "auto" (Triton on CUDA when installed), "torch" or "triton".
    `cuda_graph_max_batch_size`: capture decode graphs up to this batch size (0: none); they
    need CUDA, the Triton backend and `max_seq_len` (the widest block table).
    `prefill_graph_max_tokens`: with the decode graphs, also capture the prefill of one prompt
    of up to this many tokens (prefill_graphs.py; below 16: none)."""

    supports_overlap = True       # `launch` may run ahead of the previous step's `result`

    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype, end_ids_of, attention: str = "auto",
                 cuda_graph_max_batch_size: int = 0, max_seq_len: int | None = None,
                 prefill_graph_max_tokens: int = 0,
                 rotate_in_cache: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.block_size = block_size
        self.end_ids_of = end_ids_of
        self.rotate_in_cache = rotate_in_cache
        parallel = model.parallel
        self.faults = StepFaults.from_env(parallel.pp_rank * parallel.tp_size + parallel.tp_rank)
        args = model.args
        kv_heads = args.kv_heads_per_rank(model.parallel.tp_size)
        shape = (num_blocks, block_size, kv_heads, args.head_dim)
        self.kv_caches = [
            tuple(allocate_kv_cache(shape, model.kv_cache_dtype, dtype, self.device)
                  for _ in range(2)) for _ in model.layer_ids]
        self.attention_name = self._select_attention(attention, kv_heads)
        # The latest step's sampled tokens on the device, and each sequence's row in them.
        self._last_sampled: torch.Tensor | None = None
        self._last_rows: dict[str, int] = {}
        self.graphs = None
        if (cuda_graph_max_batch_size > 0 and self.attention_name == "triton"
                and max_seq_len and args.rope_scaling.rope_type != "dynamic"
                and model.parallel.tp_size * model.parallel.pp_size == 1):
            from runtime_service.model.cuda_graphs import DecodeGraphs, default_batch_sizes
            self.graphs = DecodeGraphs(model, self.kv_caches, block_size,
                                       -(-max_seq_len // block_size),
                                       default_batch_sizes(cuda_graph_max_batch_size),
                                       self.device)
        self.max_seq_len = max_seq_len or 0
        self.prefill_graphs = None
        if self.graphs is not None and prefill_graph_max_tokens >= SMALLEST_BUCKET:
            self.prefill_graphs = PrefillGraphs(model, self.kv_caches, block_size,
                                                self.graphs.width,
                                                default_token_buckets(prefill_graph_max_tokens),
                                                self.device)
        if self.graphs is not None:
            self._compile_kernels_ahead()
            self.graphs.capture()
        if self.prefill_graphs is not None:
            self.prefill_graphs.capture(self.graphs.pool)

    def _compile_kernels_ahead(self) -> None:
        """One recording pass over every forward the start will run: the decode graphs', the
        prefill graphs' and the eager step's logits and sampling, so that their kernels all
        compile together (cuda_graphs.compile_graph_kernels_ahead; a start with compile
        workers only)."""
        from runtime_service.model.cuda_graphs import compile_graph_kernels_ahead

        compile_graph_kernels_ahead(self._all_forwards)

    def _all_forwards(self) -> list:
        forwards = self.graphs.forwards()
        if self.prefill_graphs is not None:
            forwards += self.prefill_graphs.forwards()
        from runtime_service.model.kernels.attention_configs import LONG_PREFILL_ROWS

        if self.max_seq_len >= LONG_PREFILL_ROWS:
            forwards.append(("eager long prompt beside a decode row", self._eager_long_step))
        dtype = next(self.model.parameters()).dtype
        for rows in (1, 3):     # the final norm and LM head of an eager step, and the sampler
            hidden = torch.zeros(rows, self.model.args.hidden_size, dtype=dtype,
                                 device=self.device)
            forwards.append((f"eager logits of {rows}",
                             lambda hidden=hidden: sample_greedy(
                                 self.model.compute_logits(hidden))))
        return forwards

    def _eager_long_step(self) -> torch.Tensor:
        """An eager step of a LONG_PREFILL_ROWS-row prompt beside one decode row: the paged
        prefill's long-prompt tile, which a start whose long graphs take flash prefill ("auto"
        on Hopper) launches first in its warm-up's largest step, alone and uncompiled ahead
        (1.6 s, bench/NOTES.md run 21b). Only for recording: block 0 stands for every block."""
        from runtime_service.model.kernels.attention_configs import LONG_PREFILL_ROWS

        rows, block_size = LONG_PREFILL_ROWS, self.block_size
        inputs = StepInputs(token_ids=[0] * (rows + 1), positions=[*range(rows), 0],
                            slot_mapping=[i % block_size for i in range(rows + 1)],
                            token_seq_lens=[rows] * rows + [1], query_lens=[rows, 1],
                            seq_lens=[rows, 1],
                            block_tables=padded_tables([[0] * -(-rows // block_size), [0]]))
        input_ids, meta = self.to_device(inputs)
        return self.model(input_ids, meta, self.kv_caches)

    def _select_attention(self, attention: str, kv_heads: int) -> str:
        """Installs the chosen backend unless the model was built with a custom one."""
        current = next(iter(self.model.layers.values())).attn.backend
        if not isinstance(current, TorchReferenceAttention):
            return getattr(current, "name", type(current).__name__)
        from runtime_service.model.layers.attention_triton import make_attention_backend
        backend = make_attention_backend(attention, current.num_heads, kv_heads,
                                         current.head_dim, self.device)
        if not isinstance(backend, TorchReferenceAttention):
            self.model.set_attention_backend(backend)
        return backend.name

    def layout(self, batch: SchedulerOutput) -> StepInputs:
        """The step's tokens laid out flat, as plain lists (what rank 0 broadcasts to the others)."""
        inputs = StepInputs(block_copies=list(batch.block_copies),
                            block_rotations=list(batch.block_rotations))
        tables = []
        for item in batch.scheduled:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            shift = seq.num_evicted_tokens          # cache position = position - shift
            known_end = min(end, seq.num_tokens)
            inputs.token_ids.extend(seq.token_ids[start:known_end])
            if end > known_end:       # the last input was sampled by the step still running
                inputs.pending_rows.append((len(inputs.token_ids),
                                            self._last_rows[seq.request_key]))
                inputs.token_ids.append(0)
            rotary_shift = shift if self.rotate_in_cache else 0
            inputs.positions.extend(range(start - rotary_shift, end - rotary_shift))
            inputs.slot_mapping.extend(cache_slots(seq.block_ids, self.block_size,
                                                   start - shift, end - shift))
            inputs.token_seq_lens.extend([end] * item.num_new_tokens)
            inputs.query_lens.append(item.num_new_tokens)
            inputs.seq_lens.append(end - shift)
            tables.append(seq.block_ids)
            if item.completes:
                inputs.sample_rows.append(len(inputs.token_ids) - 1)
        inputs.block_tables = padded_tables(tables)
        return inputs

    def to_device(self, inputs: StepInputs) -> tuple[torch.Tensor, AttentionMetadata]:
        device = self.device
        as_tensor = lambda v, dt: upload(v, dt, device)  # noqa: E731
        query_start = [0]
        for n in inputs.query_lens:
            query_start.append(query_start[-1] + n)
        meta = AttentionMetadata(
            positions=as_tensor(inputs.positions, torch.int64),
            slot_mapping=as_tensor(inputs.slot_mapping, torch.int64),
            query_start=as_tensor(query_start, torch.int32),
            seq_lens=as_tensor(inputs.seq_lens, torch.int32),
            block_tables=as_tensor(inputs.block_tables, torch.int32),
            token_seq_lens=as_tensor(inputs.token_seq_lens, torch.int64),
            query_lens_host=inputs.query_lens,
            seq_lens_host=inputs.seq_lens,
            block_size=self.block_size,
        )
        input_ids = as_tensor(inputs.token_ids, torch.int64)
        self.fill_pending(input_ids, inputs.pending_rows)
        return input_ids, meta

    def fill_pending(self, input_ids: torch.Tensor, pending_rows: list[tuple[int, int]]) -> None:
        """Writes the previous step's sampled tokens into the rows that consume them, on the
        device and in stream order, so the host never waits for them."""
        if not pending_rows:
            return
        rows = [r for r, _ in pending_rows]
        sources = [s for _, s in pending_rows]
        n = len(pending_rows)
        if rows == sources == list(range(n)):       # steady decode: same sequences, same order
            input_ids[:n].copy_(self._last_sampled[:n])
            return
        index = upload(rows + sources, torch.int64, self.device)
        input_ids[index[:n]] = self._last_sampled[index[n:]]

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicates shared blocks before a sequence writes into its copy."""
        if not copies:
            return
        source = torch.tensor([c[0] for c in copies], device=self.device)
        dest = torch.tensor([c[1] for c in copies], device=self.device)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dest] = k_cache[source]
            v_cache[dest] = v_cache[source]

    def _graph_rows(self, batch: SchedulerOutput) -> tuple[list, list] | None:
        """(token, position, slot, blocks) per sequence, and the rows whose token is pending,
        if a captured graph can run this step."""
        scheduled = batch.scheduled
        if (self.graphs is None or self.graphs.graph_size_for(len(scheduled)) is None
                or not all(item.num_new_tokens == 1 and item.completes for item in scheduled)):
            return None
        rows, pending = [], []
        for i, item in enumerate(scheduled):
            seq = item.seq
            p = seq.num_computed_tokens
            slot = seq.block_ids[p // self.block_size] * self.block_size + p % self.block_size
            if p < seq.num_tokens:
                token = seq.token_ids[p]
            else:
                token = 0
                pending.append((i, self._last_rows[seq.request_key]))
            rows.append((token, p, slot, seq.block_ids))
        return rows, pending

    def _prefill_graph_inputs(self, batch: SchedulerOutput) -> StepInputs | None:
        """The step laid out, if a captured prefill graph can run it: one sequence that ends
        its prompt this step (so one token is sampled), within the largest bucket, and not
        asking for prompt logits (the graph keeps the last row's logits only)."""
        if self.prefill_graphs is None or len(batch.scheduled) != 1:
            return None
        item = batch.scheduled[0]
        if (not item.completes or item.seq.wants_prompt_logits
                or self.prefill_graphs.bucket_for(item.num_new_tokens) is None):
            return None
        return self.layout(batch)

    def rotate_blocks(self, rotations: list[tuple[tuple[int, ...], int]]) -> None:
        """StreamingLLM: keys that moved `shift` places down in the cache are turned back by
        `shift` rotary positions (rotations compose), so positions stay cache positions."""
        rotary = next(iter(self.model.layers.values())).attn.rotary
        for blocks, shift in rotations:
            if not blocks:
                continue
            index = torch.tensor(blocks, device=self.device)
            for k_cache, _ in self.kv_caches:
                keys = k_cache[index].float()
                cos, sin = rotary.cos_sin(torch.tensor([-shift], device=self.device), None,
                                          torch.float32)
                half = keys.shape[-1] // 2
                turned = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
                k_cache[index] = (keys * cos + turned * sin).to(k_cache.dtype)

    def execute(self, batch: SchedulerOutput) -> StepResult:
        """One step, waiting for its tokens."""
        return self.launch(batch).result()

    @torch.inference_mode()
    def launch(self, batch: SchedulerOutput) -> PendingStep:
        """Queues one step on the device; only prompt logprobs, when asked for, wait for it."""
        self.faults.before_step()
        self.rotate_blocks(batch.block_rotations)
        self.copy_blocks(batch.block_copies)
        finishing = [item.seq for item in batch.scheduled if item.completes]
        graph_rows = self._graph_rows(batch)
        if graph_rows is not None:
            rows, pending = graph_rows
            logits = self.graphs.run(rows, lambda ids: self.fill_pending(ids, pending))
            return self.sample_tokens(finishing, logits)
        inputs = self._prefill_graph_inputs(batch)
        if inputs is not None:
            logits = self.prefill_graphs.run(
                inputs, lambda ids: self.fill_pending(ids, inputs.pending_rows))
            return self.sample_tokens(finishing, logits)
        inputs = self.layout(batch)
        input_ids, meta = self.to_device(inputs)
        hidden = self.model(input_ids, meta, self.kv_caches)
        self.score_prompts(batch, hidden)
        if not finishing:
            return PendingStep()
        rows = upload(inputs.sample_rows, torch.int64, self.device)
        return self.sample_tokens(finishing, self.model.compute_logits(hidden[rows]))

    def score_prompts(self, batch: SchedulerOutput, hidden: torch.Tensor) -> None:
        """For requests that asked for prompt logprobs: the log-probability of each prompt
        token given the ones before it, from this step's hidden states."""
        for span in prompt_spans(batch):
            self.record_prompt_logprobs(span, self.model.compute_logits(hidden[span.rows]))

    def record_prompt_logprobs(self, span: "PromptSpan", logits: torch.Tensor) -> None:
        """Keeps what the sequence asked for of these prompt positions' logits: the logits
        themselves (context logits) and/or each next prompt token's log-probability."""
        seq = span.seq
        if seq.sampling.context_logits:
            seq.context_logits.append(logits.float().cpu())
        if not seq.sampling.prompt_logprobs:
            return
        log_probs = logits.log_softmax(dim=-1)
        targets = torch.tensor(seq.token_ids[span.first + 1:span.last + 1],
                               device=log_probs.device)
        seq.prompt_logprobs.extend(log_probs.gather(1, targets[:, None])[:, 0].tolist())

    @staticmethod
    def keep_step_logits(finishing: list[Sequence], logits: torch.Tensor) -> None:
        """Copies to the host the row each token is about to be chosen from, for sequences
        that asked for generation logits (or context logits, whose last row this is). Indexed
        by output position, so a recomputed step overwrites rather than repeats."""
        for i, seq in enumerate(finishing):
            if seq.sampling.generation_logits or seq.sampling.context_logits:
                del seq.generation_logits[seq.num_outputs_sampled:]
                seq.generation_logits.append(logits[i].float().cpu())

    def sample_tokens(self, finishing: list[Sequence], logits: torch.Tensor) -> PendingStep:
        """Samples the plain rows on the device and starts copying them to the host; hands
        beam rows back as log-probabilities for the search (on the host at once)."""
        step = PendingStep()
        self.keep_step_logits(finishing, logits)
        beam_rows = [i for i, seq in enumerate(finishing) if seq.sampling.beam_width > 1]
        if beam_rows:
            log_probs = logits[beam_rows].log_softmax(dim=-1).cpu()
            step.beam_log_probs = {finishing[i].request_key: log_probs[j]
                                   for j, i in enumerate(beam_rows)}
            plain = [i for i in range(len(finishing)) if i not in set(beam_rows)]
            finishing = [finishing[i] for i in plain]
            logits = logits[plain]
        if not finishing:
            return step
        if is_plain_greedy(finishing, self.end_ids_of):
            picked = sample_greedy(logits)
        else:
            picked = sample(logits, build_sampling_batch(finishing, self.end_ids_of, self.device))
        self._last_sampled = picked.token_ids
        self._last_rows = {seq.request_key: i for i, seq in enumerate(finishing)}
        step.sampled_seqs = finishing
        to_host = lambda t: t.to("cpu", non_blocking=True) if t.is_cuda else t  # noqa: E731
        step.token_ids, step.logprobs = to_host(picked.token_ids), to_host(picked.logprobs)
        if picked.top_ids is not None:
            step.top_ids, step.top_logprobs = to_host(picked.top_ids), to_host(picked.top_logprobs)
        if picked.token_ids.is_cuda:
            step.ready = torch.cuda.Event()
            step.ready.record()
        return step
