"""The engine: owns the step loop, the model runner and the scheduler; streams outputs per request.

`submit(request)` validates at once (typed errors, nothing scheduled) and returns a stream that
works with `for` and `async for`. The step loop runs on its own thread so a gRPC event loop stays
responsive; each step is schedule -> launch -> update -> emit, and outputs leave as soon as the
step's tokens reach the host. `abort(request_id)` frees the request's KV blocks at the next step
boundary.

Overlapped scheduling (on CUDA by default): step n+1 is scheduled and queued on the device
before step n's tokens are read, so the host's work (scheduling, layout, emitting) hides behind
the GPU's. A sequence's token from step n feeds step n+1 on the device. The price is one wasted
row when a sequence stops on an end token or a stop word (it was already queued for one more
step); length limits are known ahead and cost nothing. Requests whose sampling reads their
previous tokens (penalties, bad words, beam search) and attention windows turn overlap off for
as long as they are live.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import torch

from runtime_service.engine.beam_group import BeamGroup
from runtime_service.engine.detokenizer import IncrementalDetokenizer
from runtime_service.format.engine_config import BuildConfig, EngineConfig
from runtime_service.errors import CapacityExceeded, InvalidRequest, KilnError, Unavailable
from runtime_service.engine.kv_cache import KVCacheManager
from runtime_service.engine.live_request import LiveRequest
from runtime_service.model.loader import LoadedModel, default_build_config, load_model
from runtime_service.model.model_runner import (ModelRunner, PendingStep, SampledToken,
                                          kv_tokens_by_memory)
from runtime_service.engine.executor_options import ExecutorOptions, ExecutorStats
from runtime_service.engine.executor_plan import (largest_step_requests, num_kv_blocks,
                                                  plan_executor)
from runtime_service.engine.request import FinishReason, LogitsMatrix, Request
from runtime_service.engine.outputs import (beam_snapshot, final_beams, stamp_first_output,
                                            token_delta)
from runtime_service.engine.request_stream import RequestStream
from runtime_service.engine.scheduler import Scheduler
from runtime_service.engine.sequence import Sequence
from runtime_service.engine.stopping import cut_at_stop_string, finish_reason
from runtime_service.engine.token_decoder import load_decoder
from runtime_service.engine.validation import EngineLimits, validate_request

log = logging.getLogger("kiln.executor")

# A step that raises fails the requests in flight and the loop goes on; this many failed steps
# in a row (or any failure of a multi-rank step, after which the ranks' state is unknown) mean
# the engine cannot recover: it refuses new work and reports through `on_failure`.
MAX_CONSECUTIVE_STEP_FAILURES = 3
# An idle step loop still looks up this often: a split engine's ranks are kept alive (and a rank
# that died idle is noticed) between requests.
IDLE_WAIT_S = 0.5


def engine_identity(loaded: LoadedModel) -> str:
    """Salts prefix hashes so cached blocks are never matched across different engines."""
    return loaded.config.to_json() + str(loaded.dtype)


def step_error(exc: BaseException) -> KilnError:
    """What the requests of a failed step end with: the typed error itself, RESOURCE_EXHAUSTED
    for device memory, else UNAVAILABLE (the replica failed, another may serve the request)."""
    if isinstance(exc, KilnError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        return CapacityExceeded(f"the step ran out of device memory ({exc}); retry later")
    return Unavailable(f"the step failed ({type(exc).__name__}: {exc}); retry")


class Executor:
    """`ranks`: the process group of a tp x pp engine (distributed.ranks.RankGroup), whose other
    ranks run each step's forward on their shards, and `runner_class` the runner that drives them
    (distributed.ranked_runner); None and ModelRunner for a single-rank engine. The engine is
    handed both, so it never imports the distributed package that builds on it."""

    def __init__(self, loaded: LoadedModel, options: ExecutorOptions = ExecutorOptions(),
                 ranks=None, runner_class=ModelRunner, tokenizer_load=None):
        """`tokenizer_load`: the tokenizer (a decoder: engine/token_decoder.py), loading on a
        thread of the start's (a TokenizerLoad of engine/tokenizer_load.py, or a Future); its
        `result()` is taken when the executor starts or first needs it, after the graph capture.
        Taking it here, before the KV cache, cost a fresh node's first pod 3.05 s of waiting
        (bench/NOTES.md, run 22c). Without it the decoder loads here."""
        self._tokenizer = None
        self._tokenizer_load = tokenizer_load if options.load_tokenizer else None
        if options.load_tokenizer and tokenizer_load is None:
            self._tokenizer = load_decoder(loaded.tokenizer_dir)
        self.loaded = loaded
        self.options = options
        self.ranks = ranks
        self.config: EngineConfig = loaded.config
        build = default_build_config(loaded.config)
        self.build: BuildConfig = build
        device = torch.device(options.device)
        block_size = options.block_size
        num_blocks = num_kv_blocks(build, options, kv_tokens_by_memory(
            loaded.model, loaded.dtype, device, options.kv_free_gpu_memory_fraction))
        if ranks is not None:
            num_blocks = ranks.agree_num_kv_blocks(num_blocks)
        plan = plan_executor(loaded.config, build, options, device.type)
        window = plan.window
        self.kv = KVCacheManager(num_blocks, block_size,
                                 enable_prefix_reuse=options.enable_block_reuse,
                                 engine_salt=engine_identity(loaded), window=window)
        self.scheduler = Scheduler(plan.scheduler, self.kv)
        self.runner = runner_class(loaded.model, num_blocks, block_size, device, loaded.dtype,
                                  self.end_ids_of, attention=options.attention_backend,
                                  cuda_graph_max_batch_size=plan.graph_batch,
                                  prefill_graph_max_tokens=plan.prefill_graph_tokens,
                                  max_seq_len=build.max_seq_len,
                                  rotate_in_cache=options.streaming_llm)
        self.limits = EngineLimits(
            vocab_size=loaded.config.model.vocab_size,
            max_input_len=build.max_input_len,
            max_seq_len=build.max_seq_len,
            max_num_tokens=self.scheduler.config.max_num_tokens,
            max_beam_width=build.max_beam_width,
            max_kv_tokens=num_blocks * block_size,
            enable_chunked_prefill=options.enable_chunked_prefill,
            window_tokens=(self.kv.max_blocks_per_sequence(1 << 40) * block_size
                           if window is not None else None),
        )
        # With a window only the prompt is bound by max_seq_len; the stream itself is not.
        self.sequence_cap = build.max_seq_len if window is None else 1 << 40
        self.overlap = plan.overlap and self.runner.supports_overlap
        self.warms_up = plan.warm_up
        self._in_flight: PendingStep | None = None
        self._num_blocking_overlap = 0       # live requests that need steps one at a time
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._live: dict[str, LiveRequest] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failure: BaseException | None = None     # set once the engine cannot recover
        self.on_failure = lambda exc: None            # called once, from the step-loop thread
        # The engine-core process (server/core_process.py) swaps these two: streams that collect
        # a step's outputs, and a hook that sends them as one message after each loop pass.
        self.new_stream = RequestStream
        self.on_step_end = lambda: None               # called from the step-loop thread
        # ... and these two (use_input_source), so its step-loop thread reads the pipe itself:
        # `_poll_inputs()` takes what arrived (at the top of every loop pass), and
        # `_wait_for_inputs(timeout_s)` blocks an idle loop until something may have.
        self._poll_inputs = lambda: None
        self._wait_for_inputs = self._wait_for_wakeup
        self._consecutive_failures = 0
        self.num_steps = 0
        self.num_preemptions = 0
        self.num_overlapped_steps = 0
        self.peak_running = 0

    @classmethod
    def from_folder(cls, folder: str | Path, options: ExecutorOptions = ExecutorOptions(),
                    **load_kwargs) -> "Executor":
        loaded = load_model(folder, device=options.device, dtype=options.dtype, **load_kwargs)
        return cls(loaded, options)

    def end_ids_of(self, seq: Sequence) -> tuple[int, ...]:
        p = seq.sampling
        if p.ignore_eos or p.end_id == -1:
            return ()
        if p.end_id is not None:
            return (p.end_id,)
        return self.config.model.eos_token_ids

    # ---- client side (any thread) -------------------------------------------------------

    @property
    def tokenizer(self):
        """The engine's tokenizer (None without one); the first use waits for a load still
        running and re-raises its error."""
        if self._tokenizer_load is not None:
            self._tokenizer = self._tokenizer_load.result()
            self._tokenizer_load = None
        return self._tokenizer

    def start(self) -> "Executor":
        _ = self.tokenizer          # a failed load fails the start, before any request
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kiln-step-loop", daemon=True)
            self._thread.start()
            if self.warms_up:
                self.generate(self.largest_step_requests())
        return self

    def largest_step_requests(self) -> list[Request]:
        """The requests of the start's warm-up step (executor_plan.largest_step_requests)."""
        return largest_step_requests(self.scheduler.config, self.limits.max_input_len,
                                     self.build.max_seq_len, self.limits.vocab_size,
                                     self.kv.num_total_blocks * self.kv.block_size,
                                     self.kv.block_size)

    def use_input_source(self, poll, wait) -> None:
        """Has the step-loop thread take its own inputs: `poll()` at the top of every loop pass
        (it submits and aborts here, on the loop's thread), `wait(timeout_s)` while idle. The
        engine-core process reads its pipe this way, so a request reaches the scheduler without
        a hand-off between threads (each a wake-up of a sleeping thread, on the way to every
        first token). Takes effect within the idle wait that is under way."""
        self._poll_inputs, self._wait_for_inputs = poll, wait
        self._wakeup.set()

    def request_stop(self) -> None:
        """Asks the step loop to abort what is left and end, without waiting for it (callable
        from the loop's own thread, where shutdown's join would wait forever)."""
        self._stopping = True
        self._wakeup.set()

    def wait_stopped(self, timeout_s: float | None = None) -> None:
        """Blocks until the step loop has ended (request_stop, shutdown, or a failure)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _wait_for_wakeup(self, timeout_s: float) -> None:
        self._wakeup.wait(timeout_s)
        self._wakeup.clear()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Aborts what is left, stops the step loop and waits for it."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self.ranks is not None:
            self.ranks.close()

    def submit(self, request: Request, validated: bool = False) -> RequestStream:
        """`validated`: the caller already ran `validate_request` against these limits (the
        engine-core process, whose pod checked every request before sending it), so the
        prompt's ids are not walked a second time on the way to the first token."""
        if self._stopping:
            raise Unavailable("the executor is shutting down")
        if not validated:
            validate_request(request, self.limits)
        stream = self.new_stream(request.request_id, self.abort)
        with self._lock:
            if self.failure is not None:
                raise Unavailable(f"the engine failed ({self.failure}); retry on another replica")
            if request.request_id in self._pending:
                raise InvalidRequest(f"request_id {request.request_id!r} is already running")
            if len(self._pending) >= self.options.max_queue_size:
                raise CapacityExceeded(
                    f"the queue is full ({self.options.max_queue_size} requests); retry later")
            self._pending.add(request.request_id)
            # inside the lock, so a failing loop that drains the inbox after setting `failure`
            # sees every request admitted before it
            self._inbox.put(("submit", request, stream))
        self._wakeup.set()
        return stream

    def abort(self, request_id: str) -> bool:
        """Asks the loop to drop the request; True if it was known and not yet finished."""
        with self._lock:
            known = request_id in self._pending
        if known:
            self._inbox.put(("abort", request_id, None))
            self._wakeup.set()
        return known

    def stats(self) -> ExecutorStats:
        with self._lock:
            live = len(self._pending)
        return ExecutorStats(
            num_free_blocks=self.kv.num_free_blocks,
            num_total_blocks=self.kv.num_total_blocks,
            num_live_requests=live,
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            num_steps=self.num_steps,
            num_preemptions=self.num_preemptions,
            peak_running=self.peak_running,
            num_overlapped_steps=self.num_overlapped_steps,
        )

    # ---- the step loop (its own thread) ------------------------------------------------

    def _run(self) -> None:
        while True:
            self._poll_inputs()
            self._drain_inbox()
            if self._stopping:
                self._in_flight = None
                for live in list(self._live.values()):
                    self._finish(live, FinishReason.ABORTED)
                self.on_step_end()
                return
            try:
                if not self.scheduler.has_work:
                    self.on_step_end()              # what the aborts above emitted
                    self._wait_for_inputs(IDLE_WAIT_S)
                    if self.ranks is not None:
                        self.ranks.keep_alive()     # also notices a rank that died idle
                    continue
                self.step()
                self._consecutive_failures = 0
            except Exception as exc:  # noqa: BLE001 - one bad step must not kill the server
                log.exception("step failed; failing the requests in it")
                self._in_flight = None
                error = step_error(exc)
                for live in list(self._live.values()):
                    self._fail(live, error)
                self._consecutive_failures += 1
                if (self.ranks is not None
                        or self._consecutive_failures >= MAX_CONSECUTIVE_STEP_FAILURES):
                    self._give_up(exc, error)
                    return
            self.on_step_end()

    def _give_up(self, cause: BaseException, error: KilnError) -> None:
        """The engine cannot recover: refuse new work, fail what was admitted, tell the host."""
        log.error("the engine cannot recover (%s); refusing new requests", cause)
        with self._lock:
            self.failure = cause
        if self.ranks is not None:
            self.ranks.failed = True        # no goodbye to ranks that may be gone or stuck
        self._drain_inbox()
        for live in list(self._live.values()):
            self._fail(live, error)
        self.on_failure(cause)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload, stream = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "submit":
                seq = Sequence(payload, self.sequence_cap)
                detok = (IncrementalDetokenizer(self.tokenizer, payload.prompt_token_ids)
                         if self.tokenizer is not None else None)
                beams = (BeamGroup(seq, self.end_ids_of(seq))
                         if payload.sampling.beam_width > 1 else None)
                live = LiveRequest(seq, stream, detok, beams)
                self._live[payload.request_id] = live
                self._num_blocking_overlap += live.blocks_overlap
                self.scheduler.add(seq)
            elif kind == "abort" and payload in self._live:
                self._finish(self._live[payload], FinishReason.ABORTED)

    @property
    def _may_overlap(self) -> bool:
        return self.overlap and self._num_blocking_overlap == 0

    def step(self) -> None:
        """One iteration: schedule -> launch -> update -> emit (the previous step's tokens,
        when steps overlap, else this step's)."""
        if self._in_flight is not None and not self._may_overlap:
            self._complete(self._take_in_flight())
        batch = self.scheduler.schedule()
        self.num_preemptions += len(batch.preempted)
        self.peak_running = max(self.peak_running, len(self.scheduler.running))
        self._restart_preempted_beams(batch)
        launched = self.runner.launch(batch) if batch else None
        if launched is not None:
            for item in batch.scheduled:
                item.seq.num_computed_tokens += item.num_new_tokens
                self.kv.register_computed_blocks(item.seq)
                self.kv.slide_window(item.seq)
            for seq in launched.sampled_seqs:
                seq.num_pending_tokens += 1
            self.num_steps += 1
        if self._in_flight is not None:
            self.num_overlapped_steps += launched is not None
            self._complete(self._take_in_flight())
        if launched is not None:
            if self._may_overlap:
                self._in_flight = launched
            else:
                self._complete(launched)

    def _take_in_flight(self) -> PendingStep:
        launched, self._in_flight = self._in_flight, None
        return launched

    def _complete(self, launched: PendingStep) -> None:
        """Reads a launched step's tokens and hands them on; a sequence that was stopped or
        aborted while the step ran drops its token."""
        result = launched.result()
        for token in result.sampled:
            if not token.seq.is_finished:
                self._append(token)
        if result.beam_log_probs:
            self._advance_beams(result.beam_log_probs)

    def _restart_preempted_beams(self, batch) -> None:
        """A beam group loses all its beams together and is searched again from the prompt;
        the search is deterministic, so its result does not change."""
        for seq in batch.preempted:
            live = self._live.get(seq.request_id)
            if live is not None and live.beams is not None:
                live.beams.restart(self.scheduler)
                batch.scheduled = [s for s in batch.scheduled
                                   if s.seq.request_id != seq.request_id]

    def _advance_beams(self, rows: dict) -> None:
        for live in [lv for lv in self._live.values() if lv.beams is not None]:
            group = live.beams
            if not group.add_rows(rows):
                continue
            group.advance(self.scheduler, self.kv, self.build.max_seq_len)
            stamp_first_output(live.seq)
            if group.search.done:
                for output in final_beams(group, live.seq, self._decode):
                    live.stream._push(output)
                self._close(live)
            else:
                for index, seq in enumerate(group.running):
                    live.stream._push(beam_snapshot(live.seq, index, seq.output_token_ids,
                                                    self._decode))

    def _decode(self, tokens: list[int]) -> str:
        return (self.tokenizer.decode(tokens, skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False)
                if self.tokenizer is not None else "")

    def _append(self, token: SampledToken) -> None:
        seq = token.seq
        live = self._live[seq.request_id]
        seq.num_pending_tokens -= 1
        stamp_first_output(seq)
        seq.token_ids.append(token.token_id)
        seq.logprobs.append(token.logprob)
        seq.top_logprobs.append(token.top)
        self.kv.register_computed_blocks(seq)      # a block that waited for this token to be known
        reason = finish_reason(seq, self.end_ids_of(seq))
        new_text = live.detok.add([token.token_id]) if live.detok else ""
        if live.detok and seq.sampling.stop_strings and reason is None:
            new_text, hit = cut_at_stop_string(live.detok, seq.sampling.stop_strings, new_text)
            if hit:
                reason = FinishReason.STOP
        elif live.detok and reason is not None:
            new_text += live.detok.flush()
        self._emit(live, new_text, reason)
        if reason is not None:
            self._close(live)

    def _emit(self, live: LiveRequest, new_text: str, reason: FinishReason | None) -> None:
        logits = _logits(live.seq) if reason is not None else None
        live.stream._push(token_delta(live.seq, live.emitted_tokens, new_text, reason, logits))
        live.emitted_tokens = live.seq.num_output_tokens

    def _close(self, live: LiveRequest) -> None:
        for seq in live.sequences:
            self.scheduler.finish(seq)
        if self._live.pop(live.seq.request_id, None) is not None:
            self._num_blocking_overlap -= live.blocks_overlap
        with self._lock:
            self._pending.discard(live.seq.request_id)

    def _finish(self, live: LiveRequest, reason: FinishReason) -> None:
        live.seq.finish_reason = reason
        self._emit(live, "", reason)
        self._close(live)

    def _fail(self, live: LiveRequest, error: KilnError) -> None:
        live.stream._push(error)
        self._close(live)

    # ---- convenience for tests, benchmarks and examples --------------------------------

    def generate(self, requests: list[Request], timeout_s: float = 600.0) -> dict[str, list[int]]:
        """Submits all requests, waits, returns each one's output token ids."""
        streams = [self.submit(r) for r in requests]
        deadline = time.monotonic() + timeout_s
        results = {}
        for request, stream in zip(requests, streams):
            tokens: list[int] = []
            for out in stream:
                tokens.extend(out.new_token_ids)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"generation of {request.request_id} took over {timeout_s}s")
            results[request.request_id] = tokens
        return results


def _matrix(rows: list[torch.Tensor]) -> LogitsMatrix | None:
    if not rows:
        return None
    stacked = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows]).to(torch.float32)
    return LogitsMatrix(stacked.shape[0], stacked.shape[1], stacked.numpy().astype("<f4").tobytes())


def _logits(seq: Sequence) -> dict:
    """The logits a finished sequence asked for: context logits are the prompt positions'
    rows and the first output token's (the last prompt position predicts it)."""
    out = {}
    if seq.sampling.context_logits:
        out["context_logits"] = _matrix(seq.context_logits + seq.generation_logits[:1])
    if seq.sampling.generation_logits:
        out["generation_logits"] = _matrix(seq.generation_logits[:seq.num_output_tokens])
    return out
