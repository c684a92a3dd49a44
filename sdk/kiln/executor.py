"""`kiln.executor`: the HLAPI's executor names. In Kiln the executor is the runtime service behind
gRPC, so `GenerationExecutor` is a thin client of one: `create(engine_dir, tokenizer, ...)`
serves an engine folder through an LLM and `submit` / `generate_async` / `generate` send
requests to it; GenerationResult is the SDK's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kiln.tokenizer import TokenizerBase, tokenizer_factory
from kiln.llm import LLM
from kiln.model_config import ModelConfig
from kiln.output import OutputConfig
from kiln.result import GenerationResult
from kiln.sampling import SamplingConfig

__all__ = ["GenerationExecutor", "GenerationRequest", "GenerationResult", "has_event_loop"]


def has_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@dataclass
class GenerationRequest:
    """One request as the executor takes it: a prompt (text or token ids) and its settings."""

    ids_or_prompt: object
    streaming: bool = True
    tokenizer: TokenizerBase | None = None
    sampling_config: SamplingConfig | None = None
    output_config: OutputConfig | None = None
    bad_words: list = field(default_factory=list)
    stop_words: list = field(default_factory=list)


class GenerationExecutor:
    def __init__(self, llm: LLM):
        self.llm = llm
        self.tokenizer = llm.tokenizer

    @staticmethod
    def create(engine_dir, tokenizer=None, max_beam_width: int = 1, **llm_options
               ) -> "GenerationExecutor":
        """Serves `engine_dir` (an engine, checkpoint or HF folder) with an LLM; `llm_options`
        are LLM's keywords (kv_cache_config, capacity_scheduling_policy, ...)."""
        config = ModelConfig(str(engine_dir), max_beam_width=max_beam_width)
        return GenerationExecutor(LLM(config, tokenizer=tokenizer_factory(tokenizer),
                                      **llm_options))

    def submit(self, request: GenerationRequest) -> GenerationResult:
        return self.llm.generate_async(
            request.ids_or_prompt, request.sampling_config, request.output_config,
            request.streaming, request.bad_words or None, request.stop_words or None)

    def generate_async(self, prompt, streaming: bool, sampling_config=None, output_config=None,
                       bad_words=None, stop_words=None):
        return self.llm.generate_async(prompt, sampling_config, output_config, streaming,
                                       bad_words, stop_words)

    def generate(self, prompt, streaming: bool = False, sampling_config=None,
                 output_config=None, bad_words=None, stop_words=None):
        futures = self.generate_async(prompt, streaming, sampling_config, output_config,
                                      bad_words, stop_words)
        for future in futures if isinstance(futures, list) else [futures]:
            future.result()
        return futures

    def get_stats(self) -> dict:
        """The runtime's counters (ServerInfo) as a dict."""
        from google.protobuf.json_format import MessageToDict
        return MessageToDict(self.llm.server_info(), preserving_proto_field_name=True)

    async def aget_stats(self) -> dict:
        return await asyncio.to_thread(self.get_stats)

    def shutdown(self) -> None:
        self.llm.shutdown()

    def __enter__(self) -> "GenerationExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
