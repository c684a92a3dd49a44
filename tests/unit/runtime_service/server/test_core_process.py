"""The engine-core side of the pipe: one STEP message per loop pass, nothing when idle, queue
times stamped once, requests handed on as already validated (the pod checked them), submit
errors sent back, SHUTDOWN and EOF both stop the executor, and a core whose step loop gave up
still answers the pod until it is stopped."""

from __future__ import annotations

import socket
import threading

from runtime_service.engine import core_codec as codec
from runtime_service.engine.executor_options import ExecutorStats
from runtime_service.engine.request import FinishReason, Request, RequestOutput
from runtime_service.errors import CapacityExceeded
from runtime_service.server.core_pipe import FramedSocket
from runtime_service.server.core_process import EngineCore


class ScriptedExecutor:
    """Records what the core asks of it; the test plays its step loop by calling the hooks, and
    a thread plays the loop's input side (wait for the pipe, take what came) until asked to
    stop, or until `give_up` (an engine failure ends the loop)."""

    def __init__(self):
        self.steps = 0
        self.submitted, self.aborted, self.stopped = [], [], threading.Event()
        self.stop_requested, self.gave_up = threading.Event(), threading.Event()
        self._loop, self._loop_started = None, threading.Event()
        self.got_request = threading.Event()
        self.refuse = None
        self.streams = {}
        self.validated = []

    def stats(self) -> ExecutorStats:
        return ExecutorStats(4, 4, len(self.streams), 0, 0, self.steps, 0, 0)

    def submit(self, request, validated=False):
        if self.refuse is not None:
            raise self.refuse
        self.validated.append(validated)
        self.submitted.append(request)
        self.streams[request.request_id] = self.new_stream(request.request_id, self.abort)
        self.got_request.set()

    def abort(self, request_id):
        self.aborted.append(request_id)
        return True

    def use_input_source(self, poll, wait):
        def loop():
            while not (self.stop_requested.is_set() or self.gave_up.is_set()):
                wait(0.05)
                poll()
        self._loop = threading.Thread(target=loop, daemon=True)
        self._loop.start()
        self._loop_started.set()

    def request_stop(self):
        self.stop_requested.set()

    def wait_stopped(self):
        assert self._loop_started.wait(5), "the core never gave the loop its input source"
        self._loop.join()

    def shutdown(self):
        self.stopped.set()


def wire():
    ours, theirs = socket.socketpair()
    executor = ScriptedExecutor()
    core = EngineCore(executor, FramedSocket(theirs))
    pod = FramedSocket(ours)
    core.announce({"engine": "scripted"})
    assert pod.recv() == (codec.STARTED, codec.dumps({"engine": "scripted"}))
    serving = threading.Thread(target=core.serve, daemon=True)
    serving.start()
    return executor, core, pod, serving


def test_nothing_of_the_step_loop_goes_out_before_started():
    """The executor's idle passes call on_step_end as soon as the core has set it, before the
    core has sent STARTED: the pod must read STARTED first, then the loop's STEP."""
    ours, theirs = socket.socketpair()
    executor = ScriptedExecutor()
    core = EngineCore(executor, FramedSocket(theirs))
    pod = FramedSocket(ours)
    executor.on_step_end()                           # an idle pass before STARTED: stats
    assert not pod.readable(0.05)
    core.announce({"engine": "scripted"})
    executor.on_step_end()
    assert pod.recv()[0] == codec.STARTED
    kind, body = pod.recv()
    assert kind == codec.STEP and codec.decode_step(body).stats == executor.stats()


def test_one_message_per_pass_and_none_while_idle():
    executor, core, pod, serving = wire()
    request = Request("r1", [1, 2])
    pod.send(codec.SUBMIT, codec.encode_request(request))
    assert executor.got_request.wait(5)        # the step loop's thread took it
    assert executor.validated == [True]        # the pod checked it: not walked again here
    executor.steps = 1
    request = executor.submitted[0]
    request.first_scheduled_time = 42.5
    request.first_output_time = 42.75
    executor.streams["r1"]._push(RequestOutput("r1", 0, (5,)))
    executor.streams["r1"]._push(RequestOutput("r1", 1, (6,), finished=True,
                                               finish_reason=FinishReason.LENGTH))
    del executor.streams["r1"]
    executor.on_step_end()
    executor.on_step_end()                     # idle and unchanged: sends nothing
    executor.steps = 2
    executor.on_step_end()                     # only the stats moved
    first = codec.decode_step(pod.recv()[1])
    assert [o.new_token_ids for o in first.outputs] == [(5,), (6,)]
    assert first.scheduled == {"r1": 42.5} and first.first_output == {"r1": 42.75}
    assert first.stats.num_steps == 1
    second = codec.decode_step(pod.recv()[1])
    assert second.outputs == [] and second.stats.num_steps == 2
    pod.send(codec.SHUTDOWN)
    serving.join(5)
    assert executor.stopped.is_set()


def test_a_refused_submit_comes_back_as_that_requests_error_and_abort_reaches_the_executor():
    executor, core, pod, serving = wire()
    executor.refuse = CapacityExceeded("the queue is full")
    pod.send(codec.SUBMIT, codec.encode_request(Request("r1", [1])))
    [(request_id, error)] = codec.decode_step(pod.recv()[1]).errors
    assert request_id == "r1" and type(error) is CapacityExceeded
    pod.send(codec.ABORT, b"r2")
    pod.close()                                # the pod is gone: EOF stops the executor
    serving.join(5)
    assert executor.aborted == ["r2"] and executor.stopped.is_set()


def test_a_failure_flushes_the_step_then_says_failed():
    executor, core, pod, serving = wire()
    pod.send(codec.SUBMIT, codec.encode_request(Request("r1", [1])))
    assert executor.got_request.wait(5)
    executor.streams["r1"]._push(CapacityExceeded("device memory"))
    executor.on_failure(RuntimeError("CUDA error"))
    kind, body = pod.recv()
    assert kind == codec.STEP and codec.decode_step(body).errors[0][0] == "r1"
    assert pod.recv() == (codec.FAILED, codec.dumps(["RuntimeError", "CUDA error"]))
    pod.send(codec.SHUTDOWN)
    serving.join(5)


def test_after_the_step_loop_gave_up_the_core_still_answers_until_shutdown():
    from runtime_service.errors import Unavailable
    executor, core, pod, serving = wire()
    executor.gave_up.set()                     # the engine failed: the loop took its last pass
    executor.wait_stopped()
    executor.refuse = Unavailable("the engine failed")
    pod.send(codec.SUBMIT, codec.encode_request(Request("late", [1])))
    [(request_id, error)] = codec.decode_step(pod.recv()[1]).errors
    assert request_id == "late" and type(error) is Unavailable
    pod.send(codec.ABORT, b"late")
    assert not executor.stopped.is_set()
    pod.send(codec.SHUTDOWN)
    serving.join(5)
    assert not serving.is_alive() and executor.stopped.is_set()
    assert executor.aborted == ["late"]


def test_a_message_that_arrives_in_pieces_is_read_whole():
    executor, core, pod, serving = wire()
    frame = pod.frame(codec.SUBMIT, codec.encode_request(Request("r1", list(range(1, 3000)))))
    pod.send_bytes(frame[:7])                  # the step loop sees it begin, then waits for it
    pod.send_bytes(frame[7:])
    assert executor.got_request.wait(5)
    assert executor.submitted[0].prompt_token_ids == list(range(1, 3000))
    pod.send(codec.SHUTDOWN)
    serving.join(5)
    assert executor.stopped.is_set()


def test_the_pods_settings_reach_the_core_unchanged(tmp_path):
    from runtime_service.engine.executor_options import ExecutorOptions
    from runtime_service.server.core_client import start_message
    from runtime_service.server.core_process import settings_from
    from runtime_service.server.engine_host import RuntimeSettings
    options = ExecutorOptions(dtype="float32", block_size=8, kv_max_tokens=64,
                              policy="MAX_UTILIZATION", max_attention_window=32,
                              sink_token_length=4, streaming_llm=True, max_queue_size=7,
                              overlap_scheduling=False, cuda_graph_max_batch_size=0)
    settings = RuntimeSettings(cache_dir=tmp_path, executor=options, share_startup_cache=True,
                               engine_core="process")
    message = codec.loads(start_message("s3://bucket/engine", settings, 1.5))
    assert message["uri"] == "s3://bucket/engine" and message["pod_age_s"] == 1.5
    back = settings_from(message["settings"])
    assert back.executor == options
    assert back.cache_dir == tmp_path and back.share_startup_cache
