"""`LLM`: build (or find) an engine for a ModelConfig, have a runtime serve it, generate through it.

Construction, each step in its own module: find or start the services (services.py: arguments,
then KILN_BUILDER / KILN_RUNTIME, else the embedded default), refuse settings the runtime cannot
honour and build through the Builder (engine_build.py; a saved engine on this machine skips the
build), then give the runtime its engine and options (attach.py). Generation is always a gRPC stream; `generate` waits for a
batch of them, `generate_async` hands back the GenerationResult at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from kiln._checks import boolean, instance, integer, one_of
from kiln.attach import attach_replicas, attach_runtime, runtime_options
from kiln.client import BuilderClient, LoopThread
from kiln.engine_build import build_engine, check_capabilities, local_engine_key
from kiln.errors import InvalidArgument
from kiln.model_config import ModelConfig
from kiln.result import GenerationResult
from kiln.runtime_config import CapacitySchedulerPolicy, KvCacheConfig, StreamingLLMParam
from kiln.sampling import SamplingConfig
from kiln.services import start_services
from kiln.v1 import builder_pb2, runtime_pb2

log = logging.getLogger("kiln")

MAX_BATCH = 4096


def _is_token_ids(value) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


class LLM:
    def __init__(self, config: ModelConfig, tokenizer=None, kv_cache_config: KvCacheConfig | None = None,
                 capacity_scheduling_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
                 async_mode: bool = False, streaming_llm: bool | StreamingLLMParam = False, *,
                 enable_chunked_context: bool = True,
                 builder: str | None = None, runtime: str | list[str] | None = None,
                 kiln_home_dir: str | None = None, show_progress: bool = True,
                 startup_timeout_s: float = 900.0):
        self.config = instance(ModelConfig)("config", config)
        if tokenizer is not None and not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
            raise InvalidArgument("tokenizer must have encode(text) and decode(token_ids) methods")
        self.tokenizer = tokenizer
        self.kv_cache_config = instance(KvCacheConfig, optional=True)("kv_cache_config",
                                                                      kv_cache_config)
        self.capacity_scheduling_policy = one_of(CapacitySchedulerPolicy)(
            "capacity_scheduling_policy", capacity_scheduling_policy)
        self.async_mode = boolean("async_mode", async_mode)
        if not isinstance(streaming_llm, (bool, StreamingLLMParam)):
            raise InvalidArgument("streaming_llm must be a bool or a StreamingLLMParam")
        self.streaming_llm = streaming_llm
        self.enable_chunked_context = boolean("enable_chunked_context", enable_chunked_context)
        self.show_progress = show_progress
        self.build_result: builder_pb2.BuildResult | None = None
        self._processes = []
        self._clients = []
        self._loop = LoopThread()
        self._finalizer = weakref.finalize(self, LLM._release, self._processes, self._clients,
                                           self._loop)
        try:
            self._start(builder, runtime, kiln_home_dir, startup_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, builder, runtime, home_dir, timeout_s) -> None:
        engine_key = local_engine_key(self.config.model_dir)
        services = start_services(self.config.model_dir, builder, runtime, home_dir,
                                  needs_builder_for_local_engine=not engine_key,
                                  loop=self._loop, processes=self._processes,
                                  clients=self._clients, timeout_s=timeout_s)
        self.home, self.runtime = services.home, services.runtime
        check_capabilities(self.config, services.server_info)
        self.builder = None
        if services.builder is not None:
            self.builder = BuilderClient(services.builder, self._loop)
            self._clients.append(self.builder)
            self.build_result = build_engine(self.config, self.builder, services.server_info,
                                             local_builder=services.builder_process is not None,
                                             show_progress=self.show_progress)
            uri, engine_key = self.build_result.engine.ref.uri, self.build_result.engine.ref.engine_key
        else:
            uri = str(Path(self.config.model_dir).resolve())
        options = runtime_options(self.kv_cache_config, self.capacity_scheduling_policy,
                                  self.streaming_llm, self.enable_chunked_context)
        self.model_info = attach_runtime(self.runtime, services.server_info, uri, engine_key,
                                         options)
        attach_replicas(self.runtime, uri, engine_key or self.model_info.engine.engine_key,
                        options)

    # ---- generation ----------------------------------------------------------------------

    @property
    def engine_key(self) -> str:
        return self.model_info.engine.engine_key

    def get_default_sampling_config(self) -> SamplingConfig:
        end_id = getattr(self.tokenizer, "eos_token_id", None) if self.tokenizer else None
        if end_id is None and self.model_info.eos_token_ids:
            end_id = self.model_info.eos_token_ids[0]
        pad_id = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer else None
        if pad_id is None and self.model_info.HasField("pad_token_id"):
            pad_id = self.model_info.pad_token_id
        return SamplingConfig(max_new_tokens=min(32, self.model_info.max_new_tokens or 32),
                              end_id=end_id, pad_id=pad_id)

    def _encode_word(self, word: str) -> list[int]:
        try:
            return list(self.tokenizer.encode(word, add_special_tokens=False))
        except TypeError:
            return list(self.tokenizer.encode(word))

    def _decode(self, token_ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True)
        except TypeError:
            return self.tokenizer.decode(token_ids)

    def generate_async(self, prompt, streaming: bool = False,
                       sampling_config: SamplingConfig | None = None,
                       timeout_s: float | None = None, priority: int = 0) -> GenerationResult:
        """Starts one request; the result is a future (`result`, `aresult`) and, with
        streaming=True, an iterator (`for` / `async for`) that yields after every chunk."""
        sampling = instance(SamplingConfig, optional=True)("sampling_config", sampling_config) \
            or self.get_default_sampling_config()
        boolean("streaming", streaming)
        integer(-1000, 1000)("priority", priority)
        request = runtime_pb2.GenerateRequest(streaming=streaming, priority=priority)
        encode = self._encode_word if self.tokenizer is not None else None
        request.sampling.CopyFrom(sampling.to_proto(encode)[0])
        _, stop_words, bad_words = sampling.to_proto(encode)
        request.stop_words.extend(stop_words)
        request.bad_words.extend(bad_words)
        request.output.return_logprobs = sampling.return_log_probs
        request.output.top_logprobs = sampling.top_logprobs
        request.output.return_prompt_logprobs = sampling.return_prompt_logprobs
        decode = None
        prompt_ids = None
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidArgument("the prompt is empty")
            if self.tokenizer is not None:
                prompt_ids = list(self.tokenizer.encode(prompt))
                request.token_ids.ids.extend(prompt_ids)
                request.output.detokenize = False
                decode = self._decode
            else:
                request.text = prompt
        elif _is_token_ids(prompt):
            if not prompt:
                raise InvalidArgument("the prompt is empty")
            prompt_ids = list(prompt)
            if min(prompt_ids) < 0:
                raise InvalidArgument("token ids must be >= 0")
            request.token_ids.ids.extend(prompt_ids)
        else:
            raise InvalidArgument(f"a prompt is a string or a list of token ids, got "
                                  f"{type(prompt).__name__}")
        return self.runtime.generate(request, prompt, prompt_ids, decode, timeout_s)

    def generate(self, prompts, sampling_config: SamplingConfig | list | None = None,
                 timeout_s: float | None = None, priority: int = 0) -> list[GenerationResult]:
        """Generates for a batch: strings, token-id lists, or one of either. Higher `priority`
        requests are admitted first when the runtime has a queue."""
        if isinstance(prompts, str) or _is_token_ids(prompts):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or len(prompts) > MAX_BATCH:
            raise InvalidArgument(f"generate takes 1 to {MAX_BATCH} prompts, got {len(prompts)}")
        configs = sampling_config if isinstance(sampling_config, list) else \
            [sampling_config] * len(prompts)
        if len(configs) != len(prompts):
            raise InvalidArgument("give one sampling_config, or one per prompt")
        results = []
        try:
            for prompt, config in zip(prompts, configs):
                results.append(self.generate_async(prompt, sampling_config=config,
                                                   timeout_s=timeout_s, priority=priority))
            return [result.result() for result in results]
        except BaseException:
            for result in results:
                result.cancel()
            raise

    # ---- engine and lifecycle ------------------------------------------------------------

    def server_info(self) -> runtime_pb2.ServerInfo:
        return self.runtime.server_info()

    def save(self, engine_dir: str | os.PathLike) -> Path:
        """Writes the served engine into `engine_dir`; ModelConfig(model_dir=engine_dir) loads it
        back without a rebuild. The folder appears complete or not at all."""
        target = Path(engine_dir).resolve()
        if target.exists() and any(target.iterdir()):
            raise InvalidArgument(f"{target} exists and is not empty")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            self.runtime.export_engine(partial)
            if target.exists():
                target.rmdir()
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target

    @staticmethod
    def _release(processes, clients, loop) -> None:
        for client in clients:
            client.close()
        clients.clear()
        for process in reversed(processes):
            process.stop()
        processes.clear()
        loop.close()

    def shutdown(self) -> None:
        """Closes the connections and stops the services this LLM started (idempotent)."""
        self._finalizer()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
