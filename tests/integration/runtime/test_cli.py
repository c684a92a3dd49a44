"""`kiln generate` streams from a running runtime; `kiln serve-runtime` is the service's own entry."""

from __future__ import annotations

import subprocess
import sys

from support.random_llama import hf_greedy


def kiln(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln.cli", *args], capture_output=True,
                          text=True, timeout=timeout_s)


def test_kiln_generate_streams_token_ids_from_a_runtime(pod, tiny_model):
    done = kiln("generate", "--runtime", pod.address, "--ids", "--max-new-tokens", "5", "32,12")
    assert done.returncode == 0, done.stderr
    assert [int(t) for t in done.stdout.split()] == hf_greedy(tiny_model, [32, 12], 5)
    assert "[length; 5 tokens]" in done.stderr


def test_kiln_generate_reports_a_refusal_plainly(pod):
    done = kiln("generate", "--runtime", pod.address, "--ids", "--max-new-tokens", "5", "99999999")
    assert done.returncode == 1 and "INVALID_ARGUMENT" in done.stderr


def test_service_commands_pass_through():
    done = kiln("serve-runtime", "--help")
    assert done.returncode == 0 and "--allow-load-engine" in done.stdout
    assert kiln().returncode == 2
