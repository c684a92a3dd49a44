"""A `kiln build` stopped by SIGTERM (Kubernetes stopping a Job's pod) removes its partial folder
and exits 143, through the `kiln` launcher as well as the builder's own entry point."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from builder_service.cli import EXIT_TERMINATED, PAUSE_ENV
from support.servers import REPO, subprocess_env


def test_sigterm_mid_build_removes_the_partial_folder_and_exits_143(tmp_path, tiny_hf):
    work = tmp_path / "work"
    build = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "build", "--model", str(tiny_hf),
         "--store", str(tmp_path / "store"), "--work-dir", str(work), "--dtype", "float32"],
        cwd=REPO, env=subprocess_env(**{PAUSE_ENV: "convert"}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = []
        for line in build.stderr:           # the build holds at its first convert event
            seen.append(line)
            if f"paused at stage convert ({PAUSE_ENV})" in line:
                break
        else:
            raise AssertionError("the build never reached the convert stage:\n" + "".join(seen))
        partials = [p.name for p in (work / "builds").iterdir()]
        assert len(partials) == 1 and partials[0].startswith(".partial-"), partials
        build.send_signal(signal.SIGTERM)      # to the `kiln` launcher, as a pod's PID 1 gets it
        stdout, rest = build.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):   # the launcher and its build child
            os.killpg(build.pid, signal.SIGKILL)
    stderr = "".join(seen) + rest
    assert build.returncode == EXIT_TERMINATED == 143, stderr
    assert list((work / "builds").iterdir()) == []
    assert "kiln build: stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert stdout == ""                        # no engine reference: nothing was published
