"""`GenerationResult`: one request's output, filled in as responses arrive; a future and a stream.

The gRPC side (a background thread) only appends raw responses; the caller's side applies them
when it looks, one per step of iteration, so `async for` / `for` see the output grow chunk by
chunk and `result()` sees it whole. `offset` placement (out[offset:] = tokens) makes duplicates
harmless. Works from any thread and any event loop.

It is the HLAPI's GenerationResult too: a GenerationOutput (text, token_ids, log_probs,
context_logits, generation_logits) with the future's running / cancelled / exception and the
stream's text_diff.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

from kiln.errors import KilnError
from kiln.output import GenerationOutput, decode_logits

FINISH_REASONS = {0: None, 1: "length", 2: "end_id", 3: "stop", 4: "aborted"}
_END = object()


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    _pieces: dict = field(default_factory=dict, repr=False)   # offset -> text of that chunk


class GenerationResult(GenerationOutput):
    __eq__ = object.__eq__          # a result is a live object, compared by identity
    __hash__ = object.__hash__
    beam_search_enabled = False

    def __init__(self, request_id: str, prompt, prompt_token_ids, streaming: bool,
                 decode=None, cancel=None, beam_width: int = 1,
                 exclude_input_from_output: bool = True):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.streaming = streaming
        self.outputs: list[CompletionOutput] = []
        self.finished = False
        self.usage: dict[str, int] = {}
        self.prompt_logprobs: list[float] = []
        self.beam_search_enabled = beam_width > 1
        self.exclude_input_from_output = exclude_input_from_output
        self._context_logits = None
        self._generation_logits: dict[int, object] = {}
        self._last_text = ""
        self._cancelled = False
        self._decode = decode
        self._cancel = cancel
        self._error: BaseException | None = None
        self._pending: collections.deque = collections.deque()
        self._closed = False
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # ---- the producer (gRPC thread) ------------------------------------------------------

    def _deliver(self, item) -> None:
        """Queues a GenerateResponse, an exception, or _END; wakes every waiter."""
        with self._cond:
            if self._closed:
                return
            self._pending.append(item)
            if item is _END or isinstance(item, BaseException):
                self._closed = True
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass

    # ---- the consumer (caller's thread) --------------------------------------------------

    def _output(self, index: int) -> CompletionOutput:
        while len(self.outputs) <= index:
            self.outputs.append(CompletionOutput(index=len(self.outputs)))
        return self.outputs[index]

    def _apply_next(self) -> str:
        """Applies one pending item; returns 'chunk', 'complete', 'end' or '' when none."""
        with self._cond:
            if not self._pending:
                return ""
            item = self._pending.popleft()
        if item is _END:
            self.finished = True
            return "end"
        if isinstance(item, BaseException):
            self._error = item
            self.finished = True
            return "end"
        kind = item.WhichOneof("kind")
        part = getattr(item, kind)
        out = self._output(part.sequence_index)
        if kind == "chunk":
            del out.token_ids[part.offset:]
            out.token_ids.extend(part.token_ids)
            if part.logprobs:
                del out.logprobs[part.offset:]
                out.logprobs.extend(part.logprobs)
            if self._decode:
                out.text = self._decode(out.token_ids)
            else:       # text by chunk offset, so a resent or rewritten tail replaces, not repeats
                out._pieces = {o: t for o, t in out._pieces.items() if o < part.offset}
                out._pieces[part.offset] = part.text
                out.text = "".join(out._pieces[o] for o in sorted(out._pieces))
        else:
            out.token_ids = list(part.token_ids)
            out.logprobs = list(part.logprobs)
            out.top_logprobs = [list(zip(top.token_ids, top.logprobs)) for top in part.top_logprobs]
            if part.prompt_logprobs:
                self.prompt_logprobs = list(part.prompt_logprobs)
            if part.HasField("context_logits"):
                self._context_logits = decode_logits(part.context_logits)
            if part.HasField("generation_logits"):
                self._generation_logits[part.sequence_index] = decode_logits(
                    part.generation_logits)
            out.text = self._decode(out.token_ids) if self._decode else part.text
            out.finish_reason = FINISH_REASONS.get(part.finish_reason)
            self.usage = {"prompt_tokens": part.usage.prompt_tokens,
                          "completion_tokens": part.usage.completion_tokens,
                          "cached_tokens": part.usage.cached_tokens}
        return kind

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        while self._apply_next():
            pass
        self._raise_if_failed()

    def done(self) -> bool:
        with self._cond:
            return self._closed

    def result(self, timeout: float | None = None) -> "GenerationResult":
        """Blocks until the request finished (or raises TimeoutError after `timeout` seconds)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed, timeout):
                raise TimeoutError(f"request {self.request_id} did not finish in {timeout}s")
        self._drain()
        return self

    async def aresult(self, timeout: float | None = None) -> "GenerationResult":
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"request {self.request_id} did not finish in {timeout}s")
            try:
                await asyncio.wait_for(self._async_wait(), remaining)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"request {self.request_id} did not finish in {timeout}s") from None
        self._drain()
        return self

    async def _async_wait(self) -> None:
        event = asyncio.Event()
        with self._cond:
            if self._pending or self._closed:
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        await event.wait()

    def cancel(self) -> None:
        """Cancels the call; the server aborts the request and frees its KV blocks."""
        if self._cancel is not None and not self.done():
            self._cancelled = True
            self._cancel()

    def cancelled(self) -> bool:
        return self._cancelled

    def running(self) -> bool:
        return not self.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Waits like result() and returns the request's error instead of raising it (None
        when it succeeded); a timeout still raises TimeoutError, as a future's does."""
        try:
            self.result(timeout)
        except TimeoutError:
            raise
        except Exception as exc:        # noqa: BLE001 - handing the error back is the point
            return exc
        return None

    # ---- iteration: one yield per chunk (streaming) or one at the end --------------------

    def _step(self) -> bool | None:
        """Applies pending items until one is worth yielding: True yield, False end, None wait."""
        while True:
            kind = self._apply_next()
            if kind == "":
                # result() may already have drained the end: then iteration is over, not idle
                return False if self.finished else None
            if kind == "end":
                self._raise_if_failed()
                return False
            if kind == "chunk" or not self.streaming:
                if kind == "complete" and any(o.finish_reason is None for o in self.outputs):
                    continue
                return True

    def __aiter__(self):
        return self

    async def __anext__(self) -> "GenerationResult":
        while True:
            step = self._step()
            if step is True:
                return self
            if step is False:
                raise StopAsyncIteration
            await self._async_wait()

    def __iter__(self):
        return self

    def __next__(self) -> "GenerationResult":
        while True:
            step = self._step()
            if step is True:
                return self
            if step is False:
                raise StopIteration
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)

    # ---- the HLAPI's view: the first sequence, or all of them with beams -----------------

    def _pick(self, name: str):
        values = [self._value(o, name) for o in self.outputs]
        if len(values) <= 1:
            return values[0] if values else ([] if name in ("token_ids", "logprobs") else
                                             "" if name == "text" else None)
        return values

    def _value(self, out: CompletionOutput, name: str):
        """One sequence's field; with OutputConfig.exclude_input_from_output=False the token
        ids and text carry the prompt in front, as the HLAPI returns them."""
        value = getattr(out, name)
        if self.exclude_input_from_output or name not in ("token_ids", "text"):
            return value
        if name == "token_ids":
            return list(self.prompt_token_ids or []) + value
        if self._decode and self.prompt_token_ids is not None:
            return self._decode(list(self.prompt_token_ids) + out.token_ids)
        return (self.prompt if isinstance(self.prompt, str) else "") + value

    @property
    def text(self):
        return self._pick("text")

    @property
    def text_diff(self) -> str:
        """The text added since the last text_diff (streaming, one sequence)."""
        if self.beam_search_enabled:
            raise ValueError("text_diff is for one sequence; with beam search read .text")
        text = self.text
        diff, self._last_text = text[len(self._last_text):], text
        return diff

    @property
    def log_probs(self):
        return self._pick("logprobs")

    @property
    def context_logits(self):
        return self._context_logits

    @property
    def generation_logits(self):
        """[output tokens, vocab] per sequence (a list of them with several sequences)."""
        values = [self._generation_logits.get(o.index) for o in self.outputs]
        return values[0] if len(values) == 1 else (values or None)

    @property
    def token_ids(self):
        return self._pick("token_ids")

    @property
    def logprobs(self):
        return self._pick("logprobs")

    @property
    def finish_reason(self):
        return self._pick("finish_reason")

    def __repr__(self) -> str:
        return (f"GenerationResult(text={self.text!r}, token_ids={self.token_ids!r}, "
                f"finish_reason={self.finish_reason!r}, finished={self.finished})")


def failed(error: KilnError, request_id: str = "") -> GenerationResult:
    """A result that already failed (for errors found before anything was sent)."""
    result = GenerationResult(request_id, None, None, streaming=False)
    result._deliver(error)
    return result
