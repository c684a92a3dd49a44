"""`LLM`: build (or find) an engine for a ModelConfig, have a runtime serve it, generate through it.

Construction: resolve the endpoints (arguments, then KILN_BUILDER / KILN_RUNTIME, else the
embedded default), ask the runtime what it can load and refuse settings it cannot honour before
any build, build through the Builder (a saved engine on this machine skips the build), then
LoadEngine with the runtime options. Generation is always a gRPC stream; `generate` waits for a
batch of them, `generate_async` hands back the GenerationResult at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import weakref
from pathlib import Path

from kiln._checks import boolean, instance, integer, one_of
from kiln.client import BuilderClient, Endpoint, LoopThread, RuntimeClient
from kiln.embedded import default_device, kiln_home, start_builder, start_runtime
from kiln.errors import FailedPrecondition, InvalidArgument
from kiln.model_config import ModelConfig
from kiln.result import GenerationResult
from kiln.runtime_config import CapacitySchedulerPolicy, KvCacheConfig, StreamingLLMParam
from kiln.sampling import SamplingConfig
from kiln.v1 import builder_pb2, engine_pb2, runtime_pb2

log = logging.getLogger("kiln")

MAX_BATCH = 4096


def local_engine_key(model_dir: str) -> str | None:
    """The engine key of a complete Kiln engine folder on this machine, else None."""
    folder = Path(model_dir)
    try:
        config = json.loads((folder / "config.json").read_text())
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if config.get("format") != "kiln-engine":
        return None
    return manifest.get("engine_key") or None


def _is_token_ids(value) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


class LLM:
    def __init__(self, config: ModelConfig, tokenizer=None, kv_cache_config: KvCacheConfig | None = None,
                 capacity_scheduling_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
                 async_mode: bool = False, streaming_llm: bool | StreamingLLMParam = False, *,
                 enable_chunked_context: bool = True,
                 builder: str | None = None, runtime: str | None = None,
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
        self._last_stage = None
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

    # ---- start-up ------------------------------------------------------------------------

    def _start(self, builder, runtime, home_dir, timeout_s) -> None:
        builder = builder or os.environ.get("KILN_BUILDER") or None
        runtime = runtime or os.environ.get("KILN_RUNTIME") or None
        self.home = kiln_home(home_dir)
        engine_key = local_engine_key(self.config.model_dir)
        embedded_runtime = runtime is None
        needs_builder = not (engine_key and embedded_runtime)
        runtime_process = builder_process = None
        if embedded_runtime:
            runtime_process = start_runtime(self.home, default_device())
            self._processes.append(runtime_process)
        if needs_builder and builder is None:
            roots = [str(Path(self.config.model_dir).resolve())] if not self._remote_source else []
            builder_process = start_builder(self.home, roots)
            self._processes.append(builder_process)
        if runtime_process is not None:
            runtime = runtime_process.wait_listening(timeout_s)
        self.runtime = RuntimeClient(Endpoint.from_env(runtime), self._loop)
        self._clients.append(self.runtime)
        server_info = self.runtime.server_info()
        self._check_capabilities(server_info)
        if needs_builder:
            if builder_process is not None:
                builder = builder_process.wait_listening(timeout_s)
                self._wait_healthy(builder_process, timeout_s)
            self.builder = BuilderClient(Endpoint.from_env(builder), self._loop)
            self._clients.append(self.builder)
            uri, engine_key = self._build(server_info, local_builder=builder_process is not None)
        else:
            self.builder = None
            uri = str(Path(self.config.model_dir).resolve())
        self.model_info = self._attach(server_info, uri, engine_key)

    @property
    def _remote_source(self) -> bool:
        return self.config.model_dir.startswith("s3://")

    def _wait_healthy(self, process, timeout_s: float) -> None:
        import time
        client = BuilderClient(Endpoint.from_env(process.address), self._loop)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                process.check_alive()
                try:
                    if client.health() == "SERVING":
                        return
                except Exception:  # noqa: BLE001 - not up yet
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
        finally:
            client.close()

    def _check_capabilities(self, info: runtime_pb2.ServerInfo) -> None:
        """Refuses, before any build, what the runtime could never serve."""
        quant = self.config.quant_config
        algo, kv_dtype = quant.builder_algo, quant.builder_kv_cache_dtype
        if algo not in info.quant_algos:
            raise FailedPrecondition(
                f"quantization {algo} is not available yet: this runtime loads "
                f"{', '.join(info.quant_algos)} engines only")
        if kv_dtype != "auto" and f"kv_{kv_dtype}" not in info.quant_algos:
            raise FailedPrecondition(
                f"a {kv_dtype} KV cache is not available yet in this runtime")
        parallel = self.config.parallel_config
        if parallel.auto_parallel:
            raise FailedPrecondition(
                "auto_parallel is not available yet; set parallel_config.tp_size and pp_size")
        if parallel.world_size > info.max_world_size:
            raise FailedPrecondition(
                f"tp_size={parallel.tp_size} x pp_size={parallel.pp_size} needs "
                f"{parallel.world_size} ranks; this runtime runs at most {info.max_world_size} "
                f"(parallel ranks are not available yet)")

    def _build_settings(self, info: runtime_pb2.ServerInfo) -> engine_pb2.BuildSettings:
        cfg = self.config
        build = cfg.build_config
        quant = cfg.quant_config
        dtype = build.dtype or ("float32" if info.device == "cpu" else "bfloat16")
        return engine_pb2.BuildSettings(
            dtype=dtype, max_batch_size=build.max_batch_size or 0,
            max_input_len=build.max_input_len or 0, max_seq_len=build.max_seq_len or 0,
            max_num_tokens=build.max_num_tokens or 0, max_beam_width=cfg.max_beam_width,
            quant=engine_pb2.QuantSettings(algo=quant.builder_algo, group_size=quant.group_size,
                                           kv_cache_dtype=quant.builder_kv_cache_dtype),
            parallel=engine_pb2.ParallelSettings(tp_size=cfg.parallel_config.tp_size,
                                                 pp_size=cfg.parallel_config.pp_size),
            target=engine_pb2.TargetSettings(device=info.device or "any"))

    def _build(self, info, local_builder: bool) -> tuple[str, str]:
        source = self.config.model_dir
        if not self._remote_source:
            folder = Path(source).resolve()
            if not folder.is_dir():
                raise InvalidArgument(f"model_dir {source} is not a folder")
            source = str(folder) if local_builder else self.builder.upload_folder(folder).uri
        request = builder_pb2.BuildRequest(source=source, settings=self._build_settings(info))
        self.build_result = self.builder.build(request, self._show_build_progress)
        ref = self.build_result.engine.ref
        return ref.uri, ref.engine_key

    def _show_build_progress(self, progress) -> None:
        """One line per stage, and one when a stage completes."""
        stage_changed = progress.stage != self._last_stage
        self._last_stage = progress.stage
        complete = progress.total and progress.done == progress.total
        if self.show_progress and (stage_changed or complete):
            total = f"/{progress.total}" if progress.total else ""
            print(f"kiln build: {progress.stage} {progress.done}{total} {progress.unit} "
                  f"{progress.message}".rstrip(), file=sys.stderr, flush=True)

    def _runtime_options(self) -> runtime_pb2.RuntimeOptions:
        options = runtime_pb2.RuntimeOptions(
            scheduler_policy=self.capacity_scheduling_policy.value)
        kv = self.kv_cache_config
        if kv is not None:
            options.kv_max_tokens = kv.max_tokens or 0
            options.kv_free_gpu_memory_fraction = kv.free_gpu_memory_fraction or 0.0
            options.max_new_tokens = kv.max_new_tokens or 0
            options.max_attention_window = kv.max_attention_window or 0
            options.sink_token_length = kv.sink_token_length or 0
            options.enable_block_reuse = kv.enable_block_reuse
        if self.streaming_llm:
            param = self.streaming_llm if isinstance(self.streaming_llm, StreamingLLMParam) \
                else StreamingLLMParam()
            options.max_attention_window = param.max_attention_window_size
            options.sink_token_length = param.sink_token_length
            options.streaming_llm = True
        if not self.enable_chunked_context:
            options.enable_chunked_context = False
        return options

    def _attach(self, info, uri: str, engine_key: str | None) -> runtime_pb2.ModelInfo:
        options = self._runtime_options()
        if info.state == runtime_pb2.SERVER_STATE_EMPTY:
            return self.runtime.load_engine(uri, options)
        model_info = self.runtime.model_info()
        if engine_key and model_info.engine.engine_key != engine_key:
            raise FailedPrecondition(
                f"the runtime already serves engine {model_info.engine.engine_key[:12]}, not "
                f"{engine_key[:12]}; point KILN_RUNTIME at a pod started for this model")
        if options != runtime_pb2.RuntimeOptions(scheduler_policy=options.scheduler_policy) or \
                options.scheduler_policy != info.scheduler_policy:
            raise FailedPrecondition(
                "the runtime already serves its engine; kv_cache_config, "
                "capacity_scheduling_policy and streaming_llm are set when a pod starts")
        return model_info

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
