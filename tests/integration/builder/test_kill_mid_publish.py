"""A builder killed mid-publish leaves no engine visible; the next build completes it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from runtime_service.errors import EngineNotFound
from runtime_service.store import open_store, pull_engine

from support.servers import BUCKET, REPO, start_s3, stop, subprocess_env
from support.tiny_llama import make_tiny_llama


@pytest.fixture
def slow_s3(tmp_path):
    """An S3 server throttled to 2 MB/s, so publishing a few MB takes seconds."""
    server = start_s3(tmp_path / "s3root", "--bwlimit", "2M")
    yield server
    stop(server.process)


def build_command(model, work):
    return [sys.executable, "-m", "builder_service", "build", "--model", str(model),
            "--store", f"s3://{BUCKET}/prod", "--work-dir", str(work), "--dtype", "float32"]


def test_killed_publish_leaves_nothing_visible_and_the_next_build_completes_it(
        slow_s3, tmp_path):
    model = make_tiny_llama(tmp_path / "hf", hidden_size=256, intermediate_size=512,
                            vocab_size=2048, num_hidden_layers=2)
    env = subprocess_env(**slow_s3.env)
    proc = subprocess.Popen(build_command(model, tmp_path / "work"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        for line in proc.stderr:
            if "stage=publish" in line or time.monotonic() > deadline:
                break
        time.sleep(0.3)  # let the first objects land
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    store = open_store(f"s3://{BUCKET}/prod", slow_s3.settings)
    assert store.list_engine_keys() == []
    partial = store.list_objects("engines")
    assert partial, "the kill came before any object was written; the test proves nothing"
    key = partial[0].key.split("/")[1]
    with pytest.raises(EngineNotFound):
        pull_engine(f"s3://{BUCKET}/prod/engines/{key}", tmp_path / "cache", slow_s3.settings)

    done = subprocess.run(build_command(model, tmp_path / "work"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stage=convert" not in done.stderr  # resumed from the finished local build
    ref = json.loads(done.stdout.splitlines()[-1])
    assert ref["engine_key"] == key and store.list_engine_keys() == [key]
    folder = pull_engine(ref["uri"], tmp_path / "cache", slow_s3.settings)
    assert (folder / "manifest.json").is_file()
