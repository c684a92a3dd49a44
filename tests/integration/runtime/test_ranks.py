"""Engines split over tp x pp ranks are served by real rank processes (gloo on CPU): the output
equals transformers' and a single rank's, scheduling features work unchanged, and stopping the
server stops every rank."""

from __future__ import annotations

import time

import grpc
import psutil
import pytest

from kiln.v1 import runtime_pb2
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.distributed.rank_worker import start_ranked_executor
from runtime_service.engine.request import Request, SamplingParams
from support.kiln_servers import RuntimePod, build_engine, runtime_stub, wait_all_blocks_free
from support.random_llama import hf_greedy, make_random_llama

PROMPTS = [[5, 17, 99, 3, 250, 8, 9], [41, 2, 300], list(range(10, 60))]
LAYOUTS = [(2, 1), (1, 2), (2, 2)]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("hf") / "llama", num_hidden_layers=4)


@pytest.fixture(scope="module")
def engines(hf_model, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    return {(tp, pp): build_engine(hf_model, store, "--tp", str(tp), "--pp", str(pp),
                                   "--max-batch-size", "8", "--max-seq-len", "256",
                                   "--max-input-len", "128",
                                   "--max-beam-width", "2")["uri"]
            for tp, pp in [(1, 1), *LAYOUTS]}


def greedy(ids, max_new_tokens=8, **output) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        token_ids=runtime_pb2.TokenIds(ids=ids), streaming=True,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=max_new_tokens, ignore_eos=True),
        output=runtime_pb2.OutputConfig(**output))


def rank_processes(pod: RuntimePod | None = None) -> list[psutil.Process]:
    """The `runtime_service worker` processes under a pod, or under this test process."""
    parent = psutil.Process(pod.process.pid if pod else None)
    return [p for p in parent.children(recursive=True)
            if "runtime_service" in p.cmdline() and "worker" in p.cmdline()]


@pytest.mark.parametrize("tp, pp", LAYOUTS)
def test_served_engine_runs_on_real_ranks_and_sigterm_stops_them(tp, pp, engines, hf_model,
                                                                  tmp_path):
    pod = RuntimePod(tmp_path, engines[(tp, pp)])
    try:
        pod.wait_serving()
        ranks = rank_processes(pod)
        assert len(ranks) == tp * pp - 1
        with grpc.insecure_channel(pod.address) as channel:
            stub = runtime_stub(channel)
            streams = [stub.Generate(greedy(p, 8), timeout=120) for p in PROMPTS]
            for prompt, stream in zip(PROMPTS, streams):
                complete = [r.complete for r in stream if r.HasField("complete")][0]
                assert list(complete.token_ids) == hf_greedy(hf_model, prompt, 8)
            cancelled = stub.Generate(greedy(PROMPTS[0], 200), timeout=120)
            next(iter(cancelled))
            cancelled.cancel()
            free, total, live = wait_all_blocks_free(stub)
            assert free == total and live == 0
    finally:
        code = pod.stop()
    assert code == 0, pod.log()
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, f"ranks left running: {[p.pid for p in alive]}"


def outputs(executor: Executor, requests: list[Request]):
    streams = [executor.submit(r) for r in requests]
    return {r.request_id: [o for o in s] for r, s in zip(requests, streams)}


def feature_requests() -> list[Request]:
    """Logprobs with prompt scoring, beams, seeded sampling, and (sent after) a prefix hit."""
    return [
        Request("logprobs", PROMPTS[0], SamplingParams(
            max_new_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=3,
            prompt_logprobs=True)),
        Request("beams", PROMPTS[1], SamplingParams(max_new_tokens=5, ignore_eos=True,
                                                    beam_width=2, num_return_sequences=2)),
        Request("sampled", PROMPTS[2], SamplingParams(max_new_tokens=6, ignore_eos=True,
                                                      temperature=0.8, top_k=20, seed=7)),
        Request("reuse", PROMPTS[2] + [1, 2], SamplingParams(max_new_tokens=4, ignore_eos=True)),
    ]


def run_features(executor: Executor):
    first, then = feature_requests()[:3], feature_requests()[3:]
    return {**outputs(executor, first), **outputs(executor, then)}


def test_logprobs_beams_and_block_reuse_on_ranks_equal_a_single_rank(engines, tmp_path):
    """The tp 2 x pp 2 engine in process as rank 0 against the unsplit engine."""
    options = ExecutorOptions(dtype="float32", load_tokenizer=False, enable_block_reuse=True,
                              block_size=4, kv_max_tokens=2048)
    single = Executor.from_folder(engines[(1, 1)], options).start()
    try:
        expected = run_features(single)
    finally:
        single.shutdown()
    ranked = start_ranked_executor(engines[(2, 2)], engines[(2, 2)], options,
                                   tmp_path / "cache").start()
    try:
        got = run_features(ranked)
    finally:
        ranked.shutdown()
    assert got["reuse"][-1].num_cached_tokens > 0
    for name, want in expected.items():
        have = got[name]
        assert [(o.new_token_ids, o.sequence_index, o.finished) for o in have] == \
            [(o.new_token_ids, o.sequence_index, o.finished) for o in want], name
        for a, b in zip(have, want):
            assert a.new_logprobs == pytest.approx(b.new_logprobs, abs=1e-4)
            assert a.prompt_logprobs == pytest.approx(b.prompt_logprobs, abs=1e-4)
            assert [[t for t, _ in row] for row in a.new_top_logprobs] == \
                [[t for t, _ in row] for row in b.new_top_logprobs]
    assert not rank_processes()


def test_a_rank_that_cannot_load_fails_the_start_and_exits(engines, tmp_path):
    import shutil
    from runtime_service.errors import FailedPrecondition
    broken = tmp_path / "broken"
    shutil.copytree(engines[(2, 1)], broken)
    (broken / "rank1.safetensors").write_bytes(b"not safetensors")
    started = time.monotonic()
    with pytest.raises(FailedPrecondition, match="rank 1 could not load"):
        start_ranked_executor(broken, str(broken), ExecutorOptions(dtype="float32"),
                              tmp_path / "cache")
    assert time.monotonic() - started < 60
    gone, alive = psutil.wait_procs(rank_processes(), timeout=10)
    assert not alive


def test_serve_under_mpiexec_uses_the_mpi_ranks(engines, hf_model, tmp_path):
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or \
        shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec is not installed")
    port_file = tmp_path / "port"
    log = open(tmp_path / "mpi.log", "wb")
    job = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "runtime_service", "serve",
                            "--engine", engines[(2, 1)], "--listen", "127.0.0.1:0",
                            "--port-file", str(port_file), "--cache-dir", str(tmp_path / "c")],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert job.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "mpi.log").read_text()
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        with grpc.insecure_channel(address) as channel:
            stub = runtime_stub(channel)
            while True:
                try:
                    reply = list(stub.Generate(greedy(PROMPTS[0], 6), timeout=60))
                    break
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        assert list(reply[-1].complete.token_ids) == hf_greedy(hf_model, PROMPTS[0], 6)
        processes = [p for p in psutil.Process(job.pid).children(recursive=True)
                     if "runtime_service" in p.cmdline()]
        ranks = [p for p in processes if "serve" in p.cmdline()]
        assert len(ranks) == 2
        (leader,) = [p for p in ranks if p.environ().get("PMI_RANK") == "0"]
        # Rank 0's engine core runs in its own process (the default), a child of rank 0.
        assert [p.ppid() for p in processes if "engine-core" in p.cmdline()] == [leader.pid]
        leader.send_signal(signal.SIGTERM)     # the pod's SIGTERM reaches rank 0
        assert job.wait(60) == 0, (tmp_path / "mpi.log").read_text()
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(10)
        log.close()


def test_ranks_do_not_outlive_a_killed_server(engines, tmp_path):
    pod = RuntimePod(tmp_path, engines[(2, 1)])
    try:
        pod.wait_serving()
        ranks = rank_processes(pod)
        assert len(ranks) == 1
        pod.process.kill()
        pod.process.wait(10)
        gone, alive = psutil.wait_procs(ranks, timeout=15)
        assert not alive, f"ranks left running after SIGKILL: {[p.pid for p in alive]}"
    finally:
        pod.stop()


def test_idle_ranks_outlast_their_collective_timeout(engines, hf_model, tmp_path):
    """Waiting for the next step is a gloo collective; an idle rank 0 keeps it alive."""
    pod = RuntimePod(tmp_path, engines[(2, 1)], env={"KILN_RANK_TIMEOUT_S": "4"})
    try:
        pod.wait_serving()
        time.sleep(10)
        with grpc.insecure_channel(pod.address) as channel:
            reply = list(runtime_stub(channel).Generate(greedy(PROMPTS[1], 4), timeout=60))
        assert list(reply[-1].complete.token_ids) == hf_greedy(hf_model, PROMPTS[1], 4)
    finally:
        assert pod.stop() == 0, pod.log()
