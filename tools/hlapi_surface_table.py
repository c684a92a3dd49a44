"""The table of tensorrt_llm.hlapi's public surface at f430a4b (2024-05-28) that Kiln keeps: every
public name with the peer's signature, and Kiln's status for it.

Kept by hand from the peer's source (tensorrt_llm/hlapi/{__init__,llm,tokenizer,utils}.py and
tensorrt_llm/executor.py); tools/hlapi_surface.py checks Kiln against it. A row is
(peer module, name, peer signature, intended status, note). Signatures are Python parameter
lists; "enum:A,B" lists an enum's members; "" is an attribute or property. Status is "same",
"implemented" (the behaviour, over gRPC; defaults or extras may differ as the note says),
"warn" (accepted; a warning says it has no effect in Kiln) or "refused" (a clear error, or not
provided, as the note says).
"""

LLM_INIT = ("(config, *, tokenizer=None, kv_cache_config=None, streaming_llm=False, "
            "async_engine_tmp_dir=None, normalize_log_probs=True, enable_chunked_context=True, "
            "capacity_scheduling_policy=..., context_chunking_policy=None, "
            "embedding_parallel_mode='SHARDING_ALONG_VOCAB', share_embedding_table=False)")
SAMPLING = ("(end_id=None, pad_id=None, max_new_tokens=None, beam_width=1, top_k=None, "
            "top_p=None, top_p_min=None, top_p_reset_ids=None, top_p_decay=None, "
            "random_seed=None, temperature=None, min_length=None, "
            "beam_search_diversity_rate=None, repetition_penalty=None, presence_penalty=None, "
            "frequency_penalty=None, length_penalty=None, early_stopping=None)")
BUILD = ("(max_input_len=256, max_output_len=256, max_batch_size=8, max_beam_width=1, "
         "max_num_tokens=None, opt_num_tokens=None, max_prompt_embedding_table_size=0, "
         "gather_context_logits=False, gather_generation_logits=False, strongly_typed=False, "
         "builder_opt=None, profiling_verbosity='layer_names_only', enable_debug_output=False, "
         "max_draft_len=0, use_refit=False, input_timing_cache=None, output_timing_cache=None, "
         "lora_config=..., auto_parallel_config=..., weight_sparsity=False, plugin_config=..., "
         "max_encoder_input_len=1024, use_fused_mlp=False, dry_run=False, "
         "visualize_network=False)")

L, U, T, E = "hlapi.llm", "hlapi.utils", "hlapi.tokenizer", "executor"
TABLE = [
    (L, "LLM", LLM_INIT, "implemented",
     "every keyword: normalize_log_probs=False and EQUAL_PROGRESS refused, "
     "embedding_parallel_mode / share_embedding_table warn; the README's async_mode and "
     "enable_streaming_llm accepted; Kiln's service keywords follow"),
    (L, "LLM.generate", "(self, prompts, sampling_config=None, output_config=None, "
     "bad_words=None, stop_words=None)", "implemented",
     "one config or one per prompt; timeout_s and priority are Kiln keywords"),
    (L, "LLM.generate_async", "(self, prompt, sampling_config=None, output_config=None, "
     "streaming=False, bad_words=None, stop_words=None)", "implemented",
     "a batch, or one prompt with a list of configs, gives a list of results"),
    (L, "LLM.get_default_sampling_config", "(self)", "same",
     "end/pad from the tokenizer, else from the engine"),
    (L, "LLM.save", "(self, engine_dir)", "same", "writes over an existing folder"),
    (L, "LLM.shutdown", "(self)", "same", ""),
    (L, "LLM.tokenizer", "", "same", "None means the runtime tokenizes"),
    (L, "LLM.__enter__", "(self)", "same", ""),
    (L, "LLM.__exit__", "(self, exc_type, exc_value, traceback)", "implemented",
     "does not swallow the exception (the peer returns exc_type is not None)"),
    (L, "ModelConfig", "(model_dir, model=None, parallel_config=..., quant_config=...)",
     "implemented", "model= refused; build_config and the README's max_beam_width are "
     "keywords; a checkpoint's or engine's tp/pp split is adopted"),
    (L, "ModelConfig.model_format", "", "same", "ModelFormatKind of a local folder"),
    (L, "ModelConfig.build_config", "", "same", ""),
    (L, "ModelConfig._update_plugin_config", "(self, key, value)", "same", ""),
    (L, "ParallelConfig", "(tp_size=1, pp_size=1, auto_parallel=False)", "same",
     "auto_parallel refused by the runtime's capability check"),
    (L, "ParallelConfig.world_size", "", "same", ""),
    (L, "ParallelConfig.devices", "", "same", ""),
    (L, "ParallelConfig.is_multi_gpu", "", "same", ""),
    (L, "StreamingLLMParam", "(max_attention_window_size=2048, sink_token_length=4)", "same",
     "hashable"),
    (L, "KvCacheConfig", "(max_tokens=None, max_attention_window=None, "
     "sink_token_length=None, free_gpu_memory_fraction=None, enable_block_reuse=False)",
     "same", "the README's max_new_tokens is a keyword"),
    (L, "CapacitySchedulerPolicy", "enum:MAX_UTILIZATION,GUARANTEED_NO_EVICT", "same", ""),
    (L, "BuildConfig", BUILD, "implemented",
     "limits default to None (the Builder's); TensorRT knobs warn; prompt tuning, draft "
     "tokens, LoRA, dry_run refused; max_seq_len and dtype follow"),
    (L, "BuildConfig.from_dict", "(config, plugin_config=None)", "same", ""),
    (L, "BuildConfig.to_dict", "(self)", "same", ""),
    (L, "BuildConfig.plugin_config.streamingllm", "", "implemented", "turns StreamingLLM on"),
    (L, "BuildConfig.plugin_config.gemm_plugin", "", "warn", "and every other kernel switch"),
    (L, "BuildConfig.plugin_config.paged_kv_cache", "", "refused", "False is refused"),
    (L, "QuantConfig", "(quant_algo=None, kv_cache_quant_algo=None, group_size=128, "
     "smoothquant_val=None, has_zero_point=False, pre_quant_scale=False, "
     "exclude_modules=None)", "same",
     "an algorithm the runtime cannot load, and the last four, are refused before a build"),
    (L, "QuantConfig.quant_mode", "", "implemented", "flags of what is quantized"),
    (L, "QuantConfig.asdict", "(self)", "same", ""),
    (L, "QuantAlgo", "enum:W8A16,W4A16,W4A16_AWQ,W4A8_AWQ,W4A16_GPTQ,W8A8_SQ_PER_CHANNEL,"
     "W8A8_SQ_PER_TENSOR_PLUGIN,W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN,"
     "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN,W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN,FP8,INT8",
     "same", "building one is refused until the runtime loads it"),
    (L, "ModelLoader", "", "refused", "not provided: the Builder service loads and converts"),
    (L, "GenerationExecutor", "", "implemented", "see executor"),
    (L, "TokenizerBase", "", "same", ""),
    (L, "TransformersTokenizer", "(tokenizer)", "same", ""),
    (L, "GenerationResult", "", "implemented", "see executor"),
    (L, "GpuArch", "", "same", "asks nvidia-smi"),
    (L, "get_device_count", "()", "same", ""),
    (L, "print_colored", "(message, color=None, writer=...)", "same", ""),
    (L, "file_with_glob_exists", "(directory, glob)", "same", ""),
    (L, "file_with_suffix_exists", "(directory, suffix)", "same", ""),
    (U, "SamplingConfig", SAMPLING, "implemented",
     "None is the engine's default; one-element lists read as their value; Kiln's extras "
     "(min_p, ignore_eos, stop_words, ...) are keywords"),
    (U, "OutputConfig", "(return_log_probs=False, return_context_logits=False, "
     "return_generation_logits=False, exclude_input_from_output=True)", "same",
     "logits arrive as numpy float32 arrays"),
    (U, "GenerationOutput", "(text='', token_ids=..., log_probs=None, context_logits=None, "
     "generation_logits=None)", "same", ""),
    (U, "GpuArch.get_arch", "()", "same", ""),
    (U, "GpuArch.is_post_hopper", "()", "same", ""),
    (U, "GpuArch.is_post_ampere", "()", "same", ""),
    (U, "GpuArch.is_post_volta", "()", "same", ""),
    (U, "ContextManager", "(resource)", "same", ""),
    (U, "print_traceback_on_error", "(func)", "same", ""),
    (U, "suppress_runtime_log", "()", "implemented", "quiets the kiln logger"),
    (T, "TokenizerBase.encode", "(self, text, *args, **kwargs)", "same", ""),
    (T, "TokenizerBase.decode", "(self, token_ids, *args, **kwargs)", "same", ""),
    (T, "TokenizerBase.batch_encode_plus", "(self, texts, *args, **kwargs)", "same", ""),
    (T, "TokenizerBase.eos_token_id", "", "same", ""),
    (T, "TokenizerBase.pad_token_id", "", "same", ""),
    (T, "TransformersTokenizer.from_pretrained", "(pretrained_model_dir, **kwargs)", "same", ""),
    (T, "tokenizer_factory", "(obj=None, **kwargs)", "same", ""),
    (E, "GenerationRequest", "(ids_or_prompt, streaming=True, tokenizer=None, "
     "sampling_config=None, output_config=None, bad_words=None, stop_words=None)",
     "implemented", "a record; bad/stop words default to empty lists"),
    (E, "GenerationResult.result", "(self, timeout=None)", "same", ""),
    (E, "GenerationResult.aresult", "(self)", "implemented", "also takes a timeout"),
    (E, "GenerationResult.running", "(self)", "same", ""),
    (E, "GenerationResult.cancelled", "(self)", "same", ""),
    (E, "GenerationResult.cancel", "(self)", "implemented",
     "aborts the request (the peer raises NotImplementedError)"),
    (E, "GenerationResult.done", "(self)", "same", ""),
    (E, "GenerationResult.exception", "(self, timeout=None)", "same", ""),
    (E, "GenerationResult.text", "", "same", ""),
    (E, "GenerationResult.text_diff", "", "same", ""),
    (E, "GenerationResult.token_ids", "", "same", ""),
    (E, "GenerationResult.log_probs", "", "same", ""),
    (E, "GenerationResult.context_logits", "", "same", ""),
    (E, "GenerationResult.generation_logits", "", "same", ""),
    (E, "GenerationResult.beam_search_enabled", "", "same", ""),
    (E, "GenerationExecutor.create", "(engine_dir, tokenizer, max_beam_width=1)",
     "implemented", "serves the folder through an LLM; the executor/scheduler/MPI arguments "
     "are LLM keywords"),
    (E, "GenerationExecutor.submit", "(self, request)", "same", ""),
    (E, "GenerationExecutor.generate_async", "(self, prompt, streaming, sampling_config, "
     "output_config=None, bad_words=None, stop_words=None)", "implemented",
     "sampling_config may be omitted"),
    (E, "GenerationExecutor.generate", "(self, prompt, streaming=False, sampling_config=None, "
     "output_config=None, bad_words=None, stop_words=None)", "same", ""),
    (E, "GenerationExecutor.shutdown", "(self)", "same", ""),
    (E, "GenerationExecutor.get_stats", "(self)", "implemented", "the runtime's ServerInfo"),
    (E, "GenerationExecutor.aget_stats", "(self)", "implemented", "the runtime's ServerInfo"),
    (E, "ExecutorBindingsWorker", "", "refused",
     "not provided: the runtime service is the worker"),
    (E, "ExecutorBindingsProxy", "", "refused", "not provided: ranks live in the runtime"),
    (E, "has_event_loop", "()", "same", ""),
]
