"""The pod's gRPC process stays free of torch up to the moment it spawns the engine core: the core
imports torch itself (3 s on the H200 host), and a pod that imported it first made every start
wait for both, one after the other (bench/NOTES.md, 2026-12-03)."""

import subprocess
import sys

from support.servers import REPO


def test_parsing_serve_arguments_and_settings_imports_no_torch():
    code = (
        "import argparse, sys\n"
        "from runtime_service.server.serve import add_serve_arguments, settings_from_args\n"
        "from runtime_service.server.engine_host import apply_options\n"
        "from kiln.v1 import runtime_pb2\n"
        "parser = argparse.ArgumentParser()\n"
        "add_serve_arguments(parser)\n"
        "settings = settings_from_args(parser.parse_args(['--engine', '/none']))\n"
        "apply_options(settings, runtime_pb2.RuntimeOptions(kv_max_tokens=4096))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'triton') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
