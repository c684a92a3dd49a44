"""The builder serves over TLS when given a certificate; plaintext clients are turned away."""

from __future__ import annotations

import shutil
import subprocess
import sys

import grpc
import pytest
from kiln.v1 import builder_pb2, builder_pb2_grpc

from support.servers import REPO, stop, subprocess_env


def self_signed(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert, key


def test_tls_server_accepts_tls_clients_only(tmp_path, tiny_hf):
    cert, key = self_signed(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder_service", "serve", "--listen", "127.0.0.1:0",
         "--store", str(tmp_path / "store"), "--work-dir", str(tmp_path / "work"),
         "--allowed-root", str(tiny_hf.parent), "--tls-cert", str(cert), "--tls-key", str(key)],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        address = proc.stdout.readline().split("listening on ")[1].split()[0]
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(address, credentials) as channel:
            stub = builder_pb2_grpc.BuilderStub(channel)
            events = list(stub.Build(builder_pb2.BuildRequest(source=str(tiny_hf)), timeout=120))
            assert events[-1].result.engine.ref.uri.startswith(str(tmp_path / "store"))
            listed = stub.ListEngines(builder_pb2.ListEnginesRequest(), timeout=30)
            assert len(listed.engines) == 1
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                builder_pb2_grpc.BuilderStub(channel).ListEngines(
                    builder_pb2.ListEnginesRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop(proc)
