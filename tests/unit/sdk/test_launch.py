"""kiln-launch runs the script on rank 0 only, whichever launcher set the rank."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("env, runs", [({}, True), ({"OMPI_COMM_WORLD_RANK": "0"}, True),
                                       ({"PMI_RANK": "1"}, False), ({"SLURM_PROCID": "3"}, False)])
def test_script_runs_on_rank_zero_only(env, runs, tmp_path):
    marker = tmp_path / "ran"
    code = f"import os; open({str(marker)!r}, 'w').write(os.environ['KILN_LAUNCH_WORLD_SIZE'])"
    clean = {k: v for k, v in __import__("os").environ.items()
             if k not in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "RANK")}
    done = subprocess.run([sys.executable, "-m", "kiln.launch", sys.executable, "-c", code],
                          env={**clean, **env, "WORLD_SIZE": "4"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert marker.exists() == runs
    if runs:
        assert marker.read_text() == "4"


def test_the_runtime_server_runs_on_every_rank():
    from kiln.launch import runs_on_every_rank
    assert runs_on_every_rank(["python", "-m", "runtime_service", "serve", "--engine", "e"])
    assert not runs_on_every_rank(["python", "app.py"])
    assert not runs_on_every_rank(["python", "-m", "runtime_service", "worker"])
