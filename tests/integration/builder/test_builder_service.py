"""The Builder service end to end: gRPC on loopback, publishing to a real S3 server."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kiln.v1 import builder_pb2, builder_pb2_grpc, engine_pb2
from safetensors.torch import load_file, save_file

from builder_service.upload_client import upload_folder
from runtime_service.format.engine_format import verify_engine_folder
from runtime_service.errors import CorruptEngine, EngineNotFound, PermissionDenied
from runtime_service.store import S3Settings, open_store, pull_engine
from runtime_service.store.s3 import make_client

from support.servers import BUCKET, REPO, subprocess_env
from support.tiny_llama import make_tiny_llama


@pytest.fixture(scope="module")
def stub(builder_server):
    channel = grpc.insecure_channel(builder_server.address)
    yield builder_pb2_grpc.BuilderStub(channel)
    channel.close()


def build(stub, server, source, name="", **settings):
    request = builder_pb2.BuildRequest(source=source, name=name, settings=engine_pb2.BuildSettings(
        dtype=settings.pop("dtype", "float32"),
        parallel=engine_pb2.ParallelSettings(tp_size=settings.pop("tp", 1)), **settings))
    events = list(stub.Build(request, metadata=server.metadata, timeout=120))
    assert events[-1].HasField("result")
    return events[:-1], events[-1].result


def test_wrong_s3_keys_are_refused(s3):
    wrong = S3Settings(endpoint=s3.settings.endpoint, access_key=s3.settings.access_key,
                       secret_key="not-the-secret-key")
    with pytest.raises(PermissionDenied):
        open_store(f"s3://{BUCKET}/prod", wrong).list_engine_keys()


def test_build_publish_list_pull_verify_delete(stub, builder_server, tiny_hf, s3, tmp_path):
    source = upload_folder(stub, tiny_hf, builder_server.metadata)
    progress, result = build(stub, builder_server, source.uri, name="tiny-tp2", tp=2)
    stages = [e.progress.stage for e in progress]
    assert {"queued", "resolve", "convert", "manifest", "publish"} <= set(stages)
    assert not result.cached
    ref = result.engine.ref
    assert ref.uri == f"s3://{BUCKET}/prod/engines/{ref.engine_key}" and ref.name == "tiny-tp2"
    assert result.engine.settings.parallel.tp_size == 2
    assert result.engine.settings.max_seq_len == 256

    progress, again = build(stub, builder_server, source.uri, tp=2)
    assert again.cached and again.engine.ref.engine_key == ref.engine_key
    assert "convert" not in [e.progress.stage for e in progress]

    listed = stub.ListEngines(builder_pb2.ListEnginesRequest(), metadata=builder_server.metadata)
    assert ref.engine_key in [e.ref.engine_key for e in listed.engines]
    got = stub.GetEngine(builder_pb2.GetEngineRequest(engine="tiny-tp2"),
                         metadata=builder_server.metadata)
    # config, two ranks, the two tokenizer files, the core's decoder and the manifest
    assert got.ref.engine_key == ref.engine_key and got.num_files == 7

    folder = pull_engine(ref.uri, tmp_path / "cache", s3.settings)
    assert folder.name.startswith(ref.engine_key + ".")
    assert verify_engine_folder(folder).engine_key == ref.engine_key
    assert (folder / "rank1.safetensors").is_file() and (folder / "tokenizer").is_dir()
    written = (folder / "rank0.safetensors").stat().st_mtime_ns
    assert pull_engine(ref.uri, tmp_path / "cache", s3.settings) == folder  # cache reuse
    assert (folder / "rank0.safetensors").stat().st_mtime_ns == written

    stub.DeleteEngine(builder_pb2.DeleteEngineRequest(engine=ref.engine_key),
                      metadata=builder_server.metadata)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetEngine(builder_pb2.GetEngineRequest(engine="tiny-tp2"),
                       metadata=builder_server.metadata)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(EngineNotFound):
        pull_engine(ref.uri, tmp_path / "cache2", s3.settings)


def test_second_upload_of_the_same_files_sends_nothing(stub, builder_server, tmp_path):
    folder = make_tiny_llama(tmp_path / "m", seed=7)
    first = upload_folder(stub, folder, builder_server.metadata)
    second = upload_folder(stub, folder, builder_server.metadata)
    # new weights travel; the tokenizer files equal earlier uploads' and may already be there
    assert first.received_bytes >= (folder / "model.safetensors").stat().st_size > 0
    assert second.received_bytes == 0 and second.source_id == first.source_id


def test_flipped_byte_or_missing_file_in_a_published_engine_is_refused(
        stub, builder_server, tiny_hf, s3, tmp_path):
    source = upload_folder(stub, tiny_hf, builder_server.metadata)
    _, result = build(stub, builder_server, source.uri, max_batch_size=3)
    key = result.engine.ref.engine_key
    client = make_client(s3.settings)
    object_name = f"prod/engines/{key}/rank0.safetensors"
    data = bytearray(client.get_object(BUCKET, object_name).read())
    data[len(data) // 2] ^= 0x01
    client.put_object(BUCKET, object_name, io.BytesIO(bytes(data)), len(data))
    with pytest.raises(CorruptEngine, match="sha256"):
        pull_engine(result.engine.ref.uri, tmp_path / "c1", s3.settings)
    client.remove_object(BUCKET, f"prod/engines/{key}/tokenizer/tokenizer.json")
    with pytest.raises(CorruptEngine, match="missing"):
        pull_engine(result.engine.ref.uri, tmp_path / "c2", s3.settings)
    assert not any(p.name == key for p in (tmp_path / "c2").iterdir())


def test_a_source_can_come_from_s3(stub, builder_server, tiny_hf, s3):
    client = make_client(s3.settings)
    for path in tiny_hf.iterdir():
        client.fput_object(BUCKET, f"models/tiny/{path.name}", str(path))
    _, result = build(stub, builder_server, f"s3://{BUCKET}/models/tiny", max_batch_size=5)
    assert not result.cached and result.engine.settings.max_batch_size == 5


def test_concurrent_identical_builds_produce_one_engine(stub, builder_server, tiny_hf):
    source = upload_folder(stub, tiny_hf, builder_server.metadata)
    results = []

    def one():
        progress, result = build(stub, builder_server, source.uri, max_batch_size=7)
        results.append(([e.progress.stage for e in progress], result))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 3
    assert len({r.engine.ref.engine_key for _, r in results}) == 1
    assert sum("convert" in stages for stages, _ in results) == 1
    assert sorted(r.cached for _, r in results) == [False, True, True]


def test_bad_inputs_get_clear_status_codes_and_the_service_stays_up(
        stub, builder_server, tiny_hf, tmp_path):
    gpt = make_tiny_llama(builder_server.models / "gpt", with_tokenizer=False)
    config = json.loads((gpt / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (gpt / "config.json").write_text(json.dumps(config))
    no_weights = make_tiny_llama(builder_server.models / "empty", with_tokenizer=False)
    (no_weights / "model.safetensors").unlink()
    corrupt = make_tiny_llama(builder_server.models / "corrupt", with_tokenizer=False)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    inside = builder_server.models / "ok"
    shutil.copytree(tiny_hf, inside)
    reshaped = builder_server.models / "reshaped"
    shutil.copytree(tiny_hf, reshaped)
    weights = load_file(str(reshaped / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"][:-1].contiguous()
    save_file(weights, str(reshaped / "model.safetensors"))
    deep = builder_server.models / "deep"
    shutil.copytree(tiny_hf, deep)
    (deep / "config.json").write_bytes(b"[" * 100000 + b"]" * 100000)
    code = grpc.StatusCode
    cases = [
        (str(gpt), {}, code.INVALID_ARGUMENT, "unknown architecture"),
        (str(no_weights), {}, code.INVALID_ARGUMENT, "safetensors"),
        (str(corrupt), {}, code.INVALID_ARGUMENT, "corrupt"),
        (str(reshaped), {}, code.INVALID_ARGUMENT, "model.norm.weight must be"),
        (str(deep), {}, code.INVALID_ARGUMENT, "nested too deeply"),
        (str(tiny_hf), {}, code.PERMISSION_DENIED, "allowed roots"),
        (str(builder_server.models / ".." / "x"), {}, code.PERMISSION_DENIED, "allowed roots"),
        ("http://example.com/model", {}, code.INVALID_ARGUMENT, "scheme"),
        (f"s3://{BUCKET}/../etc", {}, code.INVALID_ARGUMENT, "unsafe"),
        (f"s3://{BUCKET}/no/such/model", {}, code.NOT_FOUND, "no model files"),
        (str(inside), {"tp": 3}, code.INVALID_ARGUMENT, "tp_size=3"),
        (str(inside), {"max_seq_len": 100000}, code.INVALID_ARGUMENT, "max_seq_len"),
        (str(inside), {"quant": engine_pb2.QuantSettings(algo="W4A8_AWQ")},
         code.FAILED_PRECONDITION, "builds NONE, W4A16, W4A16_AWQ, W8A16, FP8"),
        (str(inside), {"quant": engine_pb2.QuantSettings(algo="W4A16", group_size=128)},
         code.INVALID_ARGUMENT, "group sizes that work: 64, 32"),
        (str(inside), {"quant": engine_pb2.QuantSettings(algo="W8A16",
                                                         exclude_modules=["a"] * 5000)},
         code.INVALID_ARGUMENT, "at most 1024"),
        (str(inside), {"quant": engine_pb2.QuantSettings(algo="W8A16",
                                                         exclude_modules=["x\x00y"])},
         code.INVALID_ARGUMENT, "quant.exclude_modules entries"),
    ]
    for source, settings, expected, words in cases:
        with pytest.raises(grpc.RpcError) as info:
            build(stub, builder_server, source, **settings)
        assert info.value.code() == expected, (source, settings, info.value.details())
        assert words in info.value.details(), (source, info.value.details())
    with pytest.raises(grpc.RpcError) as info:
        stub.GetEngine(builder_pb2.GetEngineRequest(engine="../../etc"),
                       metadata=builder_server.metadata)
    assert info.value.code() == code.INVALID_ARGUMENT
    _, ok = build(stub, builder_server, str(inside), max_batch_size=9)
    assert ok.engine.ref.engine_key
    assert builder_server.process.poll() is None


def test_token_is_required_except_for_health(builder_server):
    with grpc.insecure_channel(builder_server.address) as channel:
        stub = builder_pb2_grpc.BuilderStub(channel)
        for metadata in (None, [("authorization", "Bearer wrong-token-0123456789")]):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListEngines(builder_pb2.ListEnginesRequest(), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Build(builder_pb2.BuildRequest(source="/x"), metadata=metadata))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kiln.v1.Builder"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_sees_the_service_through_reflection(builder_server):
    grpcurl = shutil.which("grpcurl", path=str(REPO / ".venv" / "bin")) or shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed")
    out = subprocess.run([grpcurl, "-plaintext", "-H", f"authorization: Bearer "
                          f"{builder_server.token}", builder_server.address, "list"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "kiln.v1.Builder" in out.stdout and "grpc.health.v1.Health" in out.stdout


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "builder_service", *args], cwd=REPO,
                          env=subprocess_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def test_batch_build_cli_exit_codes(s3, tiny_hf, tmp_path, builder_server):
    store = f"s3://{BUCKET}/jobs"
    common = ["--model", str(tiny_hf), "--store", store, "--work-dir", str(tmp_path / "w"),
              "--dtype", "float32"]
    ok = run_cli("build", *common, "--tp", "2", "--name", "job", env=s3.env)
    assert ok.returncode == 0, ok.stderr
    ref = json.loads(ok.stdout.strip().splitlines()[-1])
    assert ref["name"] == "job" and not ref["cached"]
    assert "stage=publish" in ok.stderr and "\r" not in ok.stderr
    again = run_cli("build", *common, "--tp", "2", env=s3.env)
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["cached"]
    assert run_cli("build", *common, "--tp", "3", env=s3.env).returncode == 2
    assert run_cli("build", *common, "--quant", "W4A8_AWQ", env=s3.env).returncode == 3
    wrong = {**s3.env, "KILN_S3_SECRET_KEY": "wrong-secret-key-123"}
    denied = run_cli("build", *common, env=wrong)
    assert denied.returncode == 2 and "S3 refused" in denied.stderr
    remote = run_cli("build", "--model", str(tiny_hf), "--builder", builder_server.address,
                     "--token-file", str(write_token(tmp_path, builder_server.token)),
                     "--dtype", "float32", "--max-batch-size", "11", "--quant", "W8A16",
                     "--exclude-modules", "*.mlp.down_proj", "model.layers.0.self_attn.q_proj")
    assert remote.returncode == 0, remote.stderr
    assert ("exclude_modules keeps 3 of 8 linears unquantized: layers.0.attn.qkv_proj, "
            "layers.0.mlp.down_proj, layers.1.mlp.down_proj") in remote.stderr
    assert json.loads(remote.stdout.splitlines()[-1])["uri"].startswith(f"s3://{BUCKET}/prod/")


def write_token(tmp_path, token):
    path = tmp_path / "token"
    path.write_text(token)
    return path


def test_cancelled_awq_build_stops_at_a_layer_and_leaves_nothing_behind(stub, builder_server,
                                                                        tiny_hf):
    """The caller goes away during calibration: the build thread stops at its next layer,
    removes its partial folder and publishes nothing; the service stays up. (The server holds
    the build at its first calibration event until the cancel lands: conftest's
    TEST_PAUSE_ENV; without it a loaded machine could finish the tiny build first.)"""
    import time
    inside = builder_server.models / "cancel-me"
    shutil.copytree(tiny_hf, inside)
    words = " ".join(f"w{(i * 37) % 250}" for i in range(4000))
    (builder_server.models / "calib.txt").write_text(words)
    quant = engine_pb2.QuantSettings(algo="W4A16_AWQ", group_size=32, calib_num_samples=8,
                                     calib_seq_len=256,
                                     calib_data=str(builder_server.models / "calib.txt"))
    request = builder_pb2.BuildRequest(source=str(inside), settings=engine_pb2.BuildSettings(
        dtype="float32", quant=quant))
    call = stub.Build(request, metadata=builder_server.metadata, timeout=120)
    key = ""
    for event in call:
        if event.progress.stage == "digest" and "engine key " in event.progress.message:
            key = event.progress.message.split("engine key ")[1]
        if event.progress.stage == "calibrate":
            call.cancel()
            break
    assert key
    builds = builder_server.models.parent / "work" / "builds"

    def mine():         # this build's folder and its partials; other tests' are theirs
        return [p.name for p in builds.glob(f"*{key}*")] if builds.exists() else []
    deadline = time.monotonic() + 60
    while mine() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not mine()
    engines = stub.ListEngines(builder_pb2.ListEnginesRequest(), metadata=builder_server.metadata)
    assert all(e.settings.quant.algo != "W4A16_AWQ" for e in engines.engines)
    assert builder_server.process.poll() is None
