"""Each Kiln kernel has one Triton cache key, whichever kernel a process computes first.

The compile workers (compile_pool.py) compile a kernel in a fresh fork and the pod then loads
it from the file cache by that key; a pod on another node loads the kernels the store shares the
same way. Triton 3.6 folds a callee's module globals into a caller's key only where the callee's
own key already exists, so a kernel's key could depend on which kernel the process launched
first: run 23a's pod compiled 96 of its 97 kernels a second time (bench/NOTES.md). This runs
the kernel modules in a fresh interpreter, as the worker does, and computes each JIT function's
key in a fork of its own (the worker's case) and after all the others (the pod's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[4]

_SCRIPT = r"""
import json, os, sys
from triton.runtime.jit import JITFunction
from runtime_service.model.kernels import compile_worker

compile_worker._import_kernel_modules()
functions = {}
for module_name, module in sorted(sys.modules.items()):
    if not module_name.startswith("runtime_service.model.kernels."):
        continue
    for name, value in sorted(vars(module).items()):
        if isinstance(value, JITFunction) and value.fn.__module__ == module_name:
            functions[f"{module_name}.{name}"] = value


def key_in_a_fork(function):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_fd, function.cache_key.encode())
        os._exit(0)
    os.close(write_fd)
    key = os.read(read_fd, 1024).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    return key


alone = {name: key_in_a_fork(function) for name, function in functions.items()}
after_all = {name: function.cache_key for name, function in reversed(functions.items())}
print(json.dumps({"alone": alone, "after_all": after_all}))
"""


def test_a_kernels_cache_key_does_not_depend_on_which_kernel_came_first():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, capture_output=True,
                            text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": ":".join(sys.path)})
    assert result.returncode == 0, result.stderr[-3000:]
    keys = json.loads(result.stdout.splitlines()[-1])
    assert len(keys["alone"]) >= 30, "the kernel modules did not import"
    differ = sorted(name for name, key in keys["alone"].items()
                    if keys["after_all"][name] != key)
    assert differ == [], f"keys that depend on the order they were computed in: {differ}"
