"""Proto <-> engine dataclasses, in one place: GenerateRequest in, ModelInfo and ServerInfo out.

The engine never sees a proto and the servicer never builds a SamplingParams by hand. Text is
tokenized here (the pod owns the tokenizer); stop words given as text stay strings (the executor
matches them on decoded text), bad words given as text become token sequences.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from kiln.v1 import engine_pb2, runtime_pb2

from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.engine.request import FinishReason, Request, SamplingParams

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_WORDS = 64

FINISH_REASONS = {
    FinishReason.LENGTH: runtime_pb2.FINISH_REASON_LENGTH,
    FinishReason.END_ID: runtime_pb2.FINISH_REASON_END_ID,
    FinishReason.STOP: runtime_pb2.FINISH_REASON_STOP,
    FinishReason.ABORTED: runtime_pb2.FINISH_REASON_ABORTED,
}


@dataclass(frozen=True)
class ServingLimits:
    """Limits the pod applies before the engine's own (which come from the build)."""

    max_new_tokens: int = 2048
    default_max_new_tokens: int = 32
    max_text_chars: int = 1 << 20

    def __post_init__(self):
        for name in ("max_new_tokens", "default_max_new_tokens", "max_text_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidRequest(f"{name} must be an integer >= 1, got {value!r}")
        if self.default_max_new_tokens > self.max_new_tokens:
            object.__setattr__(self, "default_max_new_tokens", self.max_new_tokens)


@dataclass(frozen=True)
class EngineRequest:
    request: Request
    detokenize: bool
    streaming: bool


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _words(words, tokenizer, what: str, as_strings: bool) -> tuple[tuple, tuple]:
    """Splits WordSequences into (strings, token-id tuples); text bad words are tokenized."""
    if len(words) > MAX_WORDS:
        raise InvalidRequest(f"{what}: at most {MAX_WORDS} entries, got {len(words)}")
    strings, sequences = [], []
    for word in words:
        kind = word.WhichOneof("kind")
        if kind == "token_ids":
            sequences.append(tuple(word.token_ids.ids))
        elif kind == "text":
            if tokenizer is None:
                raise FailedPrecondition(f"{what} given as text need a tokenizer; the engine has "
                                         f"none, so give token ids")
            if as_strings:
                strings.append(word.text)
            else:
                sequences.append(tuple(_encode(tokenizer, word.text)))
        else:
            raise InvalidRequest(f"{what}: an entry holds neither text nor token_ids")
    return tuple(strings), tuple(sequences)


def sampling_params(msg: runtime_pb2.GenerateRequest, tokenizer,
                    limits: ServingLimits) -> SamplingParams:
    s = msg.sampling
    max_new = s.max_new_tokens if s.HasField("max_new_tokens") else limits.default_max_new_tokens
    if max_new > limits.max_new_tokens:
        raise InvalidRequest(
            f"max_new_tokens={max_new} is over this server's limit of {limits.max_new_tokens}")
    stop_strings, stop_ids = _words(msg.stop_words, tokenizer, "stop_words", as_strings=True)
    _, bad_ids = _words(msg.bad_words, tokenizer, "bad_words", as_strings=False)
    beam_width = s.beam_width if s.HasField("beam_width") else 1
    return SamplingParams(
        max_new_tokens=max_new,
        min_new_tokens=s.min_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        min_p=s.min_p,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        seed=s.seed if s.HasField("seed") else None,
        end_id=s.end_id if s.HasField("end_id") else None,
        ignore_eos=s.ignore_eos,
        stop_token_ids=stop_ids,
        stop_strings=stop_strings,
        bad_token_ids=bad_ids,
        logprobs=msg.output.return_logprobs,
        top_logprobs=msg.output.top_logprobs,
        prompt_logprobs=msg.output.return_prompt_logprobs,
        beam_width=beam_width,
        num_return_sequences=(s.num_return_sequences if s.HasField("num_return_sequences")
                              else beam_width),
        length_penalty=s.length_penalty if s.HasField("length_penalty") else 1.0,
        seed_offset=msg.resume_offset,
        early_stopping="never" if s.early_stopping_never else
        s.early_stopping if s.HasField("early_stopping") else True,
        top_p_min=s.top_p_min if s.HasField("top_p_min") else 1e-6,
        top_p_reset_id=s.top_p_reset_ids if s.HasField("top_p_reset_ids") else None,
        top_p_decay=s.top_p_decay if s.HasField("top_p_decay") else 1.0,
        beam_search_diversity_rate=s.beam_search_diversity_rate,
        context_logits=msg.output.return_context_logits,
        generation_logits=msg.output.return_generation_logits,
    )


def engine_request(msg: runtime_pb2.GenerateRequest, tokenizer,
                   limits: ServingLimits) -> EngineRequest:
    """Validates the proto-level parts and builds the engine's Request (the executor checks the rest)."""
    request_id = msg.request_id or uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(request_id):
        raise InvalidRequest("request_id must be 1 to 128 characters of [A-Za-z0-9._:-]")
    kind = msg.WhichOneof("input")
    if kind == "text":
        if not msg.text:
            raise InvalidRequest("the prompt is empty")
        if len(msg.text) > limits.max_text_chars:
            raise InvalidRequest(
                f"the prompt has {len(msg.text)} characters; at most {limits.max_text_chars}")
        if tokenizer is None:
            raise FailedPrecondition("this engine has no tokenizer; send token_ids instead of text")
        prompt = list(tokenizer(msg.text)["input_ids"])
    elif kind == "token_ids":
        prompt = list(msg.token_ids.ids)
    else:
        raise InvalidRequest("the request has no input: set text or token_ids")
    if msg.resume_offset and msg.resume_offset >= len(prompt):
        raise InvalidRequest(f"resume_offset={msg.resume_offset} must be below the input's "
                             f"{len(prompt)} tokens (it counts output tokens at its end)")
    detokenize = msg.output.detokenize if msg.output.HasField("detokenize") else kind == "text"
    request = Request(request_id=request_id, prompt_token_ids=prompt,
                      sampling=sampling_params(msg, tokenizer, limits), priority=msg.priority)
    return EngineRequest(request, detokenize=detokenize and tokenizer is not None,
                         streaming=msg.streaming)


def build_settings(config, build) -> engine_pb2.BuildSettings:
    target = config.target
    return engine_pb2.BuildSettings(
        dtype=build.dtype, max_batch_size=build.max_batch_size, max_input_len=build.max_input_len,
        max_seq_len=build.max_seq_len, max_num_tokens=build.max_num_tokens,
        max_beam_width=build.max_beam_width,
        quant=engine_pb2.QuantSettings(algo=config.quant.algo, group_size=config.quant.group_size,
                                       kv_cache_dtype=config.quant.kv_cache_dtype,
                                       exclude_modules=config.quant.exclude_modules),
        parallel=engine_pb2.ParallelSettings(tp_size=config.mapping.tp_size,
                                             pp_size=config.mapping.pp_size),
        target=engine_pb2.TargetSettings(device=target.device if target else "any",
                                         capability=target.capability if target else ""))


def model_info(executor, engine_ref: engine_pb2.EngineRef, kind: str,
               limits: ServingLimits) -> runtime_pb2.ModelInfo:
    config, build, model = executor.config, executor.build, executor.config.model
    tokenizer = executor.tokenizer
    info = runtime_pb2.ModelInfo(
        engine=engine_ref, settings=build_settings(config, build),
        architecture=model.architecture, vocab_size=model.vocab_size,
        hidden_size=model.hidden_size, num_layers=model.num_layers, num_heads=model.num_heads,
        num_kv_heads=model.num_kv_heads, max_position_embeddings=model.max_position_embeddings,
        has_tokenizer=tokenizer is not None, eos_token_ids=list(model.eos_token_ids), kind=kind,
        max_new_tokens=min(limits.max_new_tokens, build.max_seq_len),
        chat_template=(getattr(tokenizer, "chat_template", None) or "") if tokenizer else "")
    pad = model.pad_token_id
    if pad is None and tokenizer is not None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        info.pad_token_id = pad
    return info
