"""`LLM`: build (or find) an engine for a ModelConfig, have a runtime serve it, generate through it.

The surface is the HLAPI's (tensorrt_llm.hlapi.LLM): the same keywords, generate(prompts,
sampling_config, output_config, bad_words, stop_words) and generate_async(prompt,
sampling_config, output_config, streaming, bad_words, stop_words). Construction, each step in
its own module: find or start the services (services.py: arguments, then KILN_BUILDER /
KILN_RUNTIME, else the embedded default), refuse settings the runtime cannot honour and build
through the Builder (engine_build.py; a saved engine on this machine skips the build), then give
the runtime its engine and options (attach.py). Generation is always a gRPC stream; `generate`
waits for a batch of them, `generate_async` hands back GenerationResults at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from kiln import prompts as inputs
from kiln._checks import boolean, instance, integer, one_of
from kiln.attach import attach_replicas, attach_runtime, runtime_options
from kiln.client import BuilderClient, LoopThread
from kiln.engine_build import (build_engine, check_capabilities, check_quant_request,
                               check_saved_engine_quant, local_calib_file,
                               local_engine_key)
from kiln.errors import InvalidArgument
from kiln.llm_options import (check_context_chunking, check_devices, check_embedding_options,
                              check_normalize_log_probs, streaming_llm_param)
from kiln.model_config import ModelConfig
from kiln.output import OutputConfig
from kiln.result import GenerationResult
from kiln.runtime_config import CapacitySchedulerPolicy, KvCacheConfig, StreamingLLMParam
from kiln.sampling import SamplingConfig
from kiln.services import start_services
from kiln.v1 import builder_pb2, runtime_pb2

log = logging.getLogger("kiln")


class LLM:
    def __init__(self, config: ModelConfig, *, tokenizer=None,
                 kv_cache_config: KvCacheConfig | None = None,
                 streaming_llm: bool | StreamingLLMParam = False,
                 async_engine_tmp_dir: str | None = None,
                 normalize_log_probs: bool = True, enable_chunked_context: bool = True,
                 capacity_scheduling_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
                 context_chunking_policy=None,
                 embedding_parallel_mode: str = "SHARDING_ALONG_VOCAB",
                 share_embedding_table: bool = False,
                 async_mode: bool = False, enable_streaming_llm=None,
                 builder: str | None = None, runtime: str | list[str] | None = None,
                 kiln_home_dir: str | None = None, show_progress: bool = True,
                 startup_timeout_s: float = 900.0):
        self.config = instance(ModelConfig)("config", config)
        if tokenizer is not None and not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
            raise InvalidArgument("tokenizer must have encode(text) and decode(token_ids) methods")
        self._tokenizer = tokenizer
        self.kv_cache_config = instance(KvCacheConfig, optional=True)("kv_cache_config",
                                                                      kv_cache_config)
        self.capacity_scheduling_policy = one_of(CapacitySchedulerPolicy)(
            "capacity_scheduling_policy", capacity_scheduling_policy)
        self.async_mode = boolean("async_mode", async_mode)
        self.enable_streaming_llm = streaming_llm_param(
            enable_streaming_llm if enable_streaming_llm is not None else streaming_llm,
            self.config.build_config.plugin_config)
        self.streaming_llm = self.enable_streaming_llm
        self.enable_chunked_context = boolean("enable_chunked_context", enable_chunked_context)
        self.async_engine_tmp_dir = async_engine_tmp_dir
        self.normalize_log_probs = check_normalize_log_probs(normalize_log_probs)
        self.context_chunking_policy = check_context_chunking(context_chunking_policy)
        check_embedding_options(embedding_parallel_mode, share_embedding_table)
        self.config.build_config.check()
        check_devices(self.config.parallel_config)
        self.show_progress = show_progress
        self.build_result: builder_pb2.BuildResult | None = None
        self._processes = []
        self._clients = []
        self._loop = LoopThread()
        self._finalizer = weakref.finalize(self, LLM._release, self._processes, self._clients,
                                           self._loop)
        try:
            self._start(builder, runtime, kiln_home_dir, startup_timeout_s)
            if async_engine_tmp_dir is not None:
                self.save(async_engine_tmp_dir)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, builder, runtime, home_dir, timeout_s) -> None:
        check_quant_request(self.config)
        engine_key = local_engine_key(self.config.model_dir)
        if engine_key:
            check_saved_engine_quant(self.config)
        calib_file = None if engine_key else local_calib_file(self.config)
        services = start_services(self.config.model_dir, builder, runtime, home_dir,
                                  needs_builder_for_local_engine=not engine_key,
                                  loop=self._loop, processes=self._processes,
                                  clients=self._clients, timeout_s=timeout_s,
                                  extra_roots=(calib_file,) if calib_file else ())
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

    @property
    def tokenizer(self):
        """The tokenizer given to the LLM, or None: the runtime then tokenizes text."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def get_default_sampling_config(self) -> SamplingConfig:
        """end_id and pad_id from the tokenizer, else from the engine (pad falls back to end);
        every other field None, so the engine's defaults apply."""
        tokenizer = self.tokenizer
        end_id = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        pad_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if end_id is None and self.model_info.eos_token_ids:
            end_id = self.model_info.eos_token_ids[0]
        if pad_id is None and self.model_info.HasField("pad_token_id"):
            pad_id = self.model_info.pad_token_id
        return SamplingConfig(end_id=end_id, pad_id=end_id if pad_id is None else pad_id)

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

    def generate_async(self, prompt, sampling_config: SamplingConfig | list | None = None,
                       output_config: OutputConfig | None = None, streaming: bool = False,
                       bad_words=None, stop_words=None, *, timeout_s: float | None = None,
                       priority: int = 0):
        """Starts a request and returns its GenerationResult at once: a future (`result`,
        `aresult`) and, with streaming=True, an iterator (`for` / `async for`) that yields after
        every chunk. A batch of prompts, or one prompt with a list of configs, gives a list."""
        if not inputs.is_one_prompt(prompt) or isinstance(sampling_config, (list, tuple)):
            pairs = inputs.pair_configs(inputs.batch(prompt), sampling_config)
            results = []
            try:
                for one, config in pairs:
                    results.append(self.generate_async(one, config, output_config, streaming,
                                                       bad_words, stop_words,
                                                       timeout_s=timeout_s, priority=priority))
            except BaseException:
                for result in results:
                    result.cancel()
                raise
            return results
        inputs.check_config(sampling_config)
        sampling = sampling_config or self.get_default_sampling_config()
        output = instance(OutputConfig, optional=True)("output_config", output_config) \
            or OutputConfig()
        boolean("streaming", streaming)
        integer(-1000, 1000)("priority", priority)
        request = runtime_pb2.GenerateRequest(streaming=streaming, priority=priority)
        encode = self._encode_word if self.tokenizer is not None else None
        stop = (sampling.stop_words or []) + (inputs.words(stop_words, "stop_words") or [])
        bad = (sampling.bad_words or []) + (inputs.words(bad_words, "bad_words") or [])
        extra = SamplingConfig(stop_words=stop or None, bad_words=bad or None)
        message, stop_seqs, bad_seqs = sampling.to_proto(encode)
        _, stop_seqs, bad_seqs = extra.to_proto(encode)
        request.sampling.CopyFrom(message)
        request.stop_words.extend(stop_seqs)
        request.bad_words.extend(bad_seqs)
        request.output.return_logprobs = sampling.return_log_probs or output.return_log_probs
        request.output.top_logprobs = sampling.top_logprobs
        request.output.return_prompt_logprobs = sampling.return_prompt_logprobs
        request.output.return_context_logits = output.return_context_logits
        request.output.return_generation_logits = output.return_generation_logits
        decode, prompt_ids = None, None
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
        else:
            prompt_ids = list(prompt)
            if min(prompt_ids) < 0:
                raise InvalidArgument("token ids must be >= 0")
            request.token_ids.ids.extend(prompt_ids)
        result = self.runtime.generate(request, prompt, prompt_ids, decode, timeout_s)
        result.beam_search_enabled = sampling.beam_width > 1
        result.exclude_input_from_output = output.exclude_input_from_output
        return result

    def generate(self, prompts, sampling_config: SamplingConfig | list | None = None,
                 output_config: OutputConfig | None = None, bad_words=None, stop_words=None, *,
                 timeout_s: float | None = None, priority: int = 0) -> list[GenerationResult]:
        """Generates for a batch (strings, token-id lists, or one of either) and waits for all.
        Higher `priority` requests are admitted first when the runtime has a queue."""
        pairs = inputs.pair_configs(inputs.batch(prompts), sampling_config)
        results = []
        try:
            for prompt, config in pairs:
                results.append(self.generate_async(prompt, config, output_config,
                                                   bad_words=bad_words, stop_words=stop_words,
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
        back without a rebuild. Like the HLAPI, an existing folder is written over (its other
        files stay); the engine's files arrive whole, manifest.json last, so a folder with a
        manifest always holds a complete engine."""
        target = Path(engine_dir).resolve()
        target.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            self.runtime.export_engine(partial)
            (target / "manifest.json").unlink(missing_ok=True)
            files = sorted(p for p in partial.rglob("*") if p.is_file())
            files.sort(key=lambda p: p.name == "manifest.json")
            for source in files:
                destination = target / source.relative_to(partial)
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, destination)
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

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.shutdown()
