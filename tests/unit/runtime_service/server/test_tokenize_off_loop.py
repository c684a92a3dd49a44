"""Text is tokenized off the gRPC event loop, so one client's huge prompts cannot stall health
checks or other streams (issue 15, defect 4: 24 prompts of 1 MiB pushed health to 4.9 s)."""

from __future__ import annotations

import asyncio
import threading

from kiln.v1 import runtime_pb2
from runtime_service.errors import CapacityExceeded
from runtime_service.server.convert import ServingLimits
from runtime_service.server.servicer import RuntimeServicer


class LoopProbingTokenizer:
    """Finishes only once the event loop has run `loop_ran`; blocks (up to a bound) otherwise,
    which is what a slow tokenizer on the loop thread would do to every other call."""

    def __init__(self):
        self.loop_ran = threading.Event()
        self.saw_loop_run: list[bool] = []

    def __call__(self, text, add_special_tokens=True):
        self.saw_loop_run.append(self.loop_ran.wait(timeout=3))
        return {"input_ids": [1, 2, 3]}


class RefusingExecutor:
    """Takes no request (the queue is full), so a Generate ends right after tokenizing."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def submit(self, request):
        raise CapacityExceeded("full")


class Host:
    def __init__(self, executor):
        self.executor = executor
        self.limits = ServingLimits()

    def require_serving(self):
        return self.executor


class Context:
    def invocation_metadata(self):
        return ()

    def peer(self):
        return "test"

    async def abort(self, code, message):
        raise RuntimeError(code)


async def _with_loop_probe(tokenizer, call):
    async def mark_loop_alive():
        await asyncio.sleep(0.05)
        tokenizer.loop_ran.set()
    probe = asyncio.create_task(mark_loop_alive())
    await call
    await probe


def test_tokenize_runs_while_the_event_loop_keeps_serving():
    tokenizer = LoopProbingTokenizer()
    servicer = RuntimeServicer(Host(RefusingExecutor(tokenizer)))
    asyncio.run(_with_loop_probe(
        tokenizer, servicer.Tokenize(runtime_pb2.TokenizeRequest(text="x" * 1000), None)))
    assert tokenizer.saw_loop_run == [True]


def test_a_text_prompt_is_tokenized_while_the_event_loop_keeps_serving():
    tokenizer = LoopProbingTokenizer()
    servicer = RuntimeServicer(Host(RefusingExecutor(tokenizer)))

    async def generate():
        try:
            async for _ in servicer.Generate(runtime_pb2.GenerateRequest(text="x" * 1000),
                                             Context()):
                pass
        except RuntimeError:
            pass                        # the queue refused it; what matters is where it ran
    asyncio.run(_with_loop_probe(tokenizer, generate()))
    assert tokenizer.saw_loop_run == [True]
