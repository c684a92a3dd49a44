"""What crosses the pipe between a pod's gRPC process and its engine-core process, as bytes.

No pickle: every message is one kind byte and a JSON body written and read here, field by field,
so a message can only ever become the engine's own plain types. The rare messages (start, the
engine's description, a Request) are JSON objects; a Request's prompt ids are base64 of their
int32 bytes. The hot one, a step's outputs, is one JSON
array per step: each RequestOutput a short list of its always-present fields, with a dict of the
rare ones (logprobs, beams, logits) only when set. Logits matrices travel as base64 of their
float32 bytes. Errors cross as (class name, message) and come back as the same class of
runtime_service.errors (an unknown class becomes KilnError, INTERNAL).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
from dataclasses import dataclass

from runtime_service import errors
from runtime_service.engine.executor_options import ExecutorStats
from runtime_service.engine.request import (FinishReason, LogitsMatrix, Request, RequestOutput,
                                            SamplingParams)

# Pod -> core
START = b"S"           # the engine URI and the pod's settings (JSON object)
SUBMIT = b"R"          # one Request
ABORT = b"A"           # a request id
SHUTDOWN = b"Q"        # stop the step loop and exit
# Core -> pod
FETCHED = b"t"         # the engine is local: {"tokenizer_dir": path or null}, so the pod loads
                       # its tokenizer while the core goes on starting
STARTED = b"s"         # the engine's description and start-up report
START_FAILED = b"x"    # (class name, message): the start raised
STEP = b"o"            # one pass of the step loop: outputs, per-request errors, stats
FAILED = b"f"          # (class name, message): the engine cannot recover

_NESTED_TUPLES = ("stop_token_ids", "bad_token_ids")
_DEFAULT_SAMPLING = SamplingParams()


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def loads(body: bytes):
    return json.loads(body)


# ---- errors ------------------------------------------------------------------------------

def encode_error(exc: BaseException) -> list:
    return [type(exc).__name__, str(exc)]


def decode_error(pair) -> errors.KilnError:
    name, message = pair
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.KilnError):
        return cls(message)
    return errors.KilnError(f"{name}: {message}")


# ---- requests ----------------------------------------------------------------------------

def encode_sampling(params: SamplingParams) -> dict:
    """Only the fields that differ from the defaults."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)
            if getattr(params, f.name) != getattr(_DEFAULT_SAMPLING, f.name)}


def decode_sampling(data: dict) -> SamplingParams:
    fields = dict(data)
    for name in _NESTED_TUPLES:
        if name in fields:
            fields[name] = tuple(tuple(ids) for ids in fields[name])
    if "stop_strings" in fields:
        fields["stop_strings"] = tuple(fields["stop_strings"])
    return SamplingParams(**fields)


def encode_request(request: Request) -> bytes:
    """The prompt travels as base64 of little-endian int32 ids, on the way to every first token:
    a 1024-id request takes 70 us to write and 77 to read, where a JSON list made it 186 and
    166 (CI CPU, timeit)."""
    ids = request.prompt_token_ids
    return dumps({"request_id": request.request_id,
                  "prompt": base64.b64encode(struct.pack(f"<{len(ids)}i", *ids)).decode("ascii"),
                  "sampling": encode_sampling(request.sampling), "priority": request.priority,
                  "cache_salt": request.cache_salt, "arrival_time": request.arrival_time})


def decode_request(body: bytes) -> Request:
    data = loads(body)
    return Request(data["request_id"], _int32s(base64.b64decode(data["prompt"], validate=True)),
                   decode_sampling(data["sampling"]), priority=data["priority"],
                   cache_salt=data["cache_salt"], arrival_time=data["arrival_time"])


def _int32s(raw: bytes) -> list[int]:
    if len(raw) % 4:
        raise ValueError(f"a prompt of {len(raw)} bytes is not whole int32 ids")
    return list(struct.unpack(f"<{len(raw) // 4}i", raw))


# ---- outputs (one message per step) ------------------------------------------------------

def _matrix_out(matrix: LogitsMatrix) -> list:
    return [matrix.rows, matrix.cols, base64.b64encode(matrix.data).decode("ascii")]


def _matrix_in(row) -> LogitsMatrix:
    return LogitsMatrix(row[0], row[1], base64.b64decode(row[2]))


def encode_output(out: RequestOutput) -> list:
    row = [out.request_id, out.offset, out.new_token_ids, out.new_text, out.finished,
           out.finish_reason.value if out.finish_reason is not None else None,
           out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens]
    rare = {}
    if out.new_logprobs:
        rare["lp"] = out.new_logprobs
    if out.new_top_logprobs:
        rare["top"] = out.new_top_logprobs
    if out.prompt_logprobs:
        rare["plp"] = out.prompt_logprobs
    if out.sequence_index:
        rare["seq"] = out.sequence_index
    if out.cumulative_logprob is not None:
        rare["cum"] = out.cumulative_logprob
    if out.context_logits is not None:
        rare["cl"] = _matrix_out(out.context_logits)
    if out.generation_logits is not None:
        rare["gl"] = _matrix_out(out.generation_logits)
    if rare:
        row.append(rare)
    return row


_OUTPUT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RequestOutput)
                    if f.default is not dataclasses.MISSING}


def decode_output(row: list) -> RequestOutput:
    fields = dict(_OUTPUT_DEFAULTS)
    fields.update(
        request_id=row[0], offset=row[1], new_token_ids=tuple(row[2]), new_text=row[3],
        finished=row[4], finish_reason=FinishReason(row[5]) if row[5] is not None else None,
        num_prompt_tokens=row[6], num_output_tokens=row[7], num_cached_tokens=row[8])
    rare = row[9] if len(row) > 9 else None
    if rare:
        fields.update(
            new_logprobs=tuple(rare.get("lp", ())),
            new_top_logprobs=tuple(tuple((pair[0], pair[1]) for pair in position)
                                   for position in rare.get("top", ())),
            prompt_logprobs=tuple(rare.get("plp", ())),
            sequence_index=rare.get("seq", 0),
            cumulative_logprob=rare.get("cum"),
            context_logits=_matrix_in(rare["cl"]) if "cl" in rare else None,
            generation_logits=_matrix_in(rare["gl"]) if "gl" in rare else None)
    # The frozen dataclass's __init__ sets its 17 fields one object.__setattr__ at a time: on a
    # 256-stream step that was 3x the JSON parse (bench/bench_core_codec.py). Every field is
    # given here, so filling the instance's __dict__ makes the same object (the tests compare).
    output = object.__new__(RequestOutput)
    output.__dict__.update(fields)
    return output


def encode_stats(stats: ExecutorStats) -> list:
    return list(dataclasses.astuple(stats))


def decode_stats(values: list) -> ExecutorStats:
    return ExecutorStats(*values)


@dataclass
class StepMessage:
    """One pass of the core's step loop: every stream's new outputs in the order they were made,
    the requests that ended with an error, when requests were first scheduled and when they got
    their first token (the pod's queue and prefill times; CLOCK_MONOTONIC is one clock for every
    process of a host), and the executor's stats after the pass (None when unchanged)."""

    outputs: list[RequestOutput] = dataclasses.field(default_factory=list)
    errors: list[tuple[str, errors.KilnError]] = dataclasses.field(default_factory=list)
    scheduled: dict[str, float] = dataclasses.field(default_factory=dict)
    first_output: dict[str, float] = dataclasses.field(default_factory=dict)
    stats: ExecutorStats | None = None


def encode_step(step: StepMessage) -> bytes:
    body = {"o": [encode_output(out) for out in step.outputs]}
    if step.errors:
        body["e"] = [[request_id, *encode_error(exc)] for request_id, exc in step.errors]
    if step.scheduled:
        body["t"] = step.scheduled
    if step.first_output:
        body["f"] = step.first_output
    if step.stats is not None:
        body["s"] = encode_stats(step.stats)
    return dumps(body)


def decode_step(body: bytes) -> StepMessage:
    data = loads(body)
    return StepMessage(
        outputs=[decode_output(row) for row in data["o"]],
        errors=[(row[0], decode_error(row[1:])) for row in data.get("e", ())],
        scheduled=data.get("t", {}), first_output=data.get("f", {}),
        stats=decode_stats(data["s"]) if "s" in data else None)
