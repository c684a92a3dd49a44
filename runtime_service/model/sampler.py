"""Batched token selection on the logits' device.

Order of operations, per row: penalties (repetition over prompt and output, presence and
frequency over output), masks (bad words, end tokens before min_new_tokens), temperature, then
top-k, top-p (with its decay) and min-p filtering, then greedy argmax or a seeded draw. Logprobs are taken from
the distribution after penalties, masks and temperature, before filtering.

Seeds: row i draws with a generator seeded from (seed_i, output index), so a request's tokens
depend only on its own seed and position, whatever batch it shares and however often it is
preempted and recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime_service.model import kernels
from runtime_service.model.transfer import upload

_SEED_STRIDE = 1_000_003


@dataclass
class SamplingBatch:
    """Per-row settings, as device tensors where the math is batched."""

    temperature: torch.Tensor          # [B] float32, 0 for greedy rows
    top_k: torch.Tensor                # [B] int64, 0 = off
    top_p: torch.Tensor                # [B] float32, 1 = off
    min_p: torch.Tensor                # [B] float32, 0 = off
    repetition_penalty: torch.Tensor   # [B] float32, 1 = off
    presence_penalty: torch.Tensor     # [B] float32
    frequency_penalty: torch.Tensor    # [B] float32
    seen_tokens: torch.Tensor          # [B, L] int64 prompt+output ids, padded with -1
    output_tokens: torch.Tensor        # [B, M] int64 output ids, padded with -1
    banned: list[list[int]]            # per row: token ids masked out this step
    seeds: list[int]
    output_index: list[int]            # per row: position of the token being sampled
    greedy_rows: list[bool]
    top_logprobs: list[int]            # per row: how many alternatives to report
    any_penalty: bool
    any_filter: bool


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor            # [B] int64
    logprobs: torch.Tensor             # [B] float32
    top_ids: torch.Tensor | None = None        # [B, n] the n most likely tokens, when asked
    top_logprobs: torch.Tensor | None = None   # [B, n]


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Repetition penalty as HF defines it; presence/frequency as OpenAI defines them."""
    vocab = logits.shape[-1]
    seen = batch.seen_tokens
    if seen.numel():
        # Padding (-1) marks a spare column, never token 0: a scatter with a repeated index
        # keeps an arbitrary one of the written values.
        is_seen = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
        is_seen.scatter_(1, torch.where(seen >= 0, seen, vocab), True)
        penalty = batch.repetition_penalty[:, None]
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(is_seen[:, :vocab], penalized, logits)
    out = batch.output_tokens
    if out.numel():
        valid = (out >= 0).to(logits.dtype)
        counts = torch.zeros(logits.shape[0], vocab + 1, dtype=logits.dtype, device=logits.device)
        counts.scatter_add_(1, torch.where(out >= 0, out, vocab), valid)
        counts = counts[:, :vocab]
        logits = (logits - batch.frequency_penalty[:, None] * counts
                  - batch.presence_penalty[:, None] * (counts > 0).to(logits.dtype))
    return logits


def apply_bans(logits: torch.Tensor, banned: list[list[int]]) -> torch.Tensor:
    rows = [i for i, ids in enumerate(banned) for _ in ids]
    if rows:
        cols = [t for ids in banned for t in ids]
        device = logits.device
        logits = logits.index_put(
            (upload(rows, torch.int64, device), upload(cols, torch.int64, device)),
            torch.full((), float("-inf"), device=device))
    return logits


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor) -> torch.Tensor:
    """Sets to -inf every token outside each row's top-k, top-p nucleus and min-p floor."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)[:, None]
    drop = ranks >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= mass_before >= top_p[:, None]
    drop |= probs < min_p[:, None] * probs[:, :1]
    drop[:, 0] = False                       # the most likely token always survives
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _draw(probs: torch.Tensor, seeds: list[int], output_index: list[int]) -> torch.Tensor:
    """Exponential-race sampling (argmax p / E), one seeded generator per row."""
    noise = torch.empty_like(probs)
    for row, (seed, index) in enumerate(zip(seeds, output_index)):
        generator = torch.Generator(device=probs.device)
        generator.manual_seed((seed * _SEED_STRIDE + index) % (2 ** 63))
        noise[row].exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """Picks one token per row of float32 logits [B, V]."""
    if batch.any_penalty:
        logits = apply_penalties(logits, batch)
    logits = apply_bans(logits, batch.banned)
    temperature = torch.where(batch.temperature > 0, batch.temperature, 1.0)[:, None]
    scaled = logits / temperature
    logprobs_all = scaled.log_softmax(dim=-1)
    greedy = logits.argmax(dim=-1)
    if all(batch.greedy_rows):
        tokens = greedy
    else:
        filtered = filter_logits(scaled, batch.top_k, batch.top_p, batch.min_p) \
            if batch.any_filter else scaled
        drawn = _draw(filtered.softmax(dim=-1), batch.seeds, batch.output_index)
        is_greedy = upload(batch.greedy_rows, torch.bool, logits.device)
        tokens = torch.where(is_greedy, greedy, drawn)
    logprobs = logprobs_all.gather(1, tokens[:, None]).squeeze(1)
    most = max(batch.top_logprobs, default=0)
    if most:
        top_logprobs, top_ids = logprobs_all.topk(most, dim=-1)
        return SamplerOutput(tokens, logprobs, top_ids, top_logprobs)
    return SamplerOutput(tokens, logprobs)


def is_plain_greedy(rows: list, end_ids_of) -> bool:
    """True when every row is greedy with no penalty and nothing banned this step, so that
    `sample_greedy` gives exactly what `sample` would, without building a SamplingBatch.
    min_new_tokens bans only end tokens and one-token stop words: with none (ignore_eos, a
    fixed-length benchmark) it bans nothing."""
    for seq in rows:
        p = seq.sampling
        if (not p.greedy or p.repetition_penalty != 1.0 or p.presence_penalty
                or p.frequency_penalty or p.bad_token_ids or p.top_logprobs):
            return False
        if seq.num_outputs_sampled < p.min_new_tokens and banned_tokens(
                seq.token_ids, seq.num_outputs_sampled, p, end_ids_of(seq)):
            return False
    return True


def sample_greedy(logits: torch.Tensor) -> SamplerOutput:
    """Argmax of float32 logits [B, V] and its log-probability, all on the logits' device."""
    if kernels.available(logits) and logits.stride(-1) == 1:
        from runtime_service.model.kernels.sampling import greedy_pick
        return SamplerOutput(*greedy_pick(logits))
    tokens = logits.argmax(dim=-1)
    logprobs = logits.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
    return SamplerOutput(tokens, logprobs)


def banned_tokens(token_ids: list[int], num_output: int, params, end_ids: tuple[int, ...]
                  ) -> list[int]:
    """Tokens a row may not pick now: bad words whose prefix was just produced, and end
    tokens while fewer than min_new_tokens have been generated."""
    banned = []
    for words in params.bad_token_ids:
        prefix = list(words[:-1])
        if not prefix or token_ids[len(token_ids) - len(prefix):] == prefix:
            banned.append(words[-1])
    if num_output < params.min_new_tokens:
        banned.extend(end_ids)
        banned.extend(words[0] for words in params.stop_token_ids if len(words) == 1)
    return banned


def decayed_top_p(params, output_token_ids: list[int]) -> float:
    """top_p for the next token under the top-p decay rule (TensorRT-LLM's topPDecay): after
    each token it becomes max(top_p * top_p_decay, top_p_min), and the reset token restores it.
    Recomputed from the output so far, so preemption and recomputation give the same value."""
    top_p = params.top_p
    if params.top_p_decay == 1.0:
        return top_p
    for token in output_token_ids:
        top_p = params.top_p if token == params.top_p_reset_id else \
            max(top_p * params.top_p_decay, params.top_p_min)
    return top_p


def build_sampling_batch(rows: list, end_ids_of, device: torch.device) -> SamplingBatch:
    """Collects per-row settings from sequences (anything with token_ids, sampling,
    num_prompt_tokens, num_outputs_sampled and a seed)."""
    params = [seq.sampling for seq in rows]
    any_penalty = any(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty
                      for p in params)
    top_p = [decayed_top_p(s.sampling, s.output_token_ids) for s in rows]
    any_filter = any(p.top_k > 1 or q < 1.0 or p.min_p > 0.0 for p, q in zip(params, top_p))

    def padded(lists: list[list[int]]) -> torch.Tensor:
        width = max((len(x) for x in lists), default=0)
        return upload([x + [-1] * (width - len(x)) for x in lists], torch.int64,
                      device).reshape(len(lists), width)

    floats = lambda values: upload(values, torch.float32, device)  # noqa: E731
    return SamplingBatch(
        temperature=floats([0.0 if p.greedy else p.temperature for p in params]),
        top_k=upload([p.top_k for p in params], torch.int64, device),
        top_p=floats(top_p),
        min_p=floats([p.min_p for p in params]),
        repetition_penalty=floats([p.repetition_penalty for p in params]),
        presence_penalty=floats([p.presence_penalty for p in params]),
        frequency_penalty=floats([p.frequency_penalty for p in params]),
        seen_tokens=padded([s.token_ids if s.sampling.repetition_penalty != 1.0 else []
                            for s in rows]) if any_penalty else padded([]),
        output_tokens=padded([s.output_token_ids for s in rows]) if any_penalty else padded([]),
        banned=[banned_tokens(s.token_ids, s.num_outputs_sampled, s.sampling, end_ids_of(s))
                for s in rows],
        seeds=[s.seed for s in rows],
        output_index=[s.num_outputs_sampled + s.sampling.seed_offset for s in rows],
        greedy_rows=[p.greedy for p in params],
        top_logprobs=[p.top_logprobs for p in params],
        any_penalty=any_penalty,
        any_filter=any_filter,
    )
