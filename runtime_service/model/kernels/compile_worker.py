"""The compile workers' process: `python -m runtime_service.model.kernels.compile_worker N`.

It imports torch, Triton and the kernel modules once, then reads jobs (JSON lines on stdin, compile_pool.py writes
them) and compiles each in a child it forks for the job, at most N at a time. The children share
the imports copy-on-write, so N compiles cost one import, and each runs Triton's passes on its own
interpreter (on threads they hold the GIL). Each result goes back as a JSON line on stdout. Only
JSON crosses a pipe: nothing is pickled. The process is single-threaded, so forking is safe; it
exits when stdin closes, once its running children end (queued jobs are dropped).

A line in: {"id": 7, "job": {CompileJob's fields}}. A line out: {"id": 7, "name": "_dot_kernel",
"fresh": true} (fresh: compiled, not a cache hit) or {"id": 7, "error": "..."}.
"""

from __future__ import annotations

import json
import os
import select
import sys
from collections import deque

MAX_LINE = 1 << 20          # a job's specialization is a few kB


def _run_child(job_fields: dict, write_fd: int) -> None:
    """In the forked child: compiles one job, writes its result, exits without cleanup."""
    try:
        from runtime_service.model.kernels.compile_pool import CompileJob, compile_job

        fields = dict(job_fields, target=tuple(job_fields["target"]))
        name, fresh = compile_job(CompileJob(**fields))
        result = {"name": name, "fresh": fresh}
    except BaseException as exc:  # noqa: BLE001 - reported to the pod, which compiles it itself
        result = {"error": repr(exc)[:500]}
    try:
        os.write(write_fd, json.dumps(result).encode())
    finally:
        os._exit(0)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def serve(max_children: int, in_fd: int, out_fd: int) -> None:
    """The loop: queue jobs from `in_fd`, keep up to `max_children` compiling, relay results
    to `out_fd`."""
    queued: deque = deque()
    running: dict[int, tuple[int, int]] = {}        # result pipe's fd -> (job id, child pid)
    pending = b""
    open_input = True

    def reply(message: dict) -> None:
        data = json.dumps(message).encode() + b"\n"
        while data:
            data = data[os.write(out_fd, data):]

    while open_input or running:
        while queued and len(running) < max_children and open_input:
            job_id, fields = queued.popleft()
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                os.close(out_fd)
                _run_child(fields, write_fd)
            os.close(write_fd)
            running[read_fd] = (job_id, pid)
        ready, _, _ = select.select(([in_fd] if open_input else []) + list(running), [], [])
        for fd in ready:
            if fd == in_fd:
                data = os.read(in_fd, 65536)
                if not data:
                    open_input = False
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE:
                    raise ValueError("a job line is longer than the limit")
                for line in filter(None, lines):
                    message = json.loads(line)
                    queued.append((message["id"], message["job"]))
                continue
            job_id, pid = running.pop(fd)
            raw = _read_all(fd)
            os.close(fd)
            os.waitpid(pid, 0)
            try:
                result = json.loads(raw) if raw else {"error": "the child died"}
            except ValueError:
                result = {"error": "the child wrote no result"}
            reply({"id": job_id, **result})


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m runtime_service.model.kernels.compile_worker CHILDREN",
              file=sys.stderr)
        return 2
    # Results go out on a private copy of stdout; anything printed lands on stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    _import_kernel_modules()
    serve(int(argv[0]), sys.stdin.fileno(), out_fd)
    return 0


def _import_kernel_modules() -> None:
    """torch, Triton and Kiln's kernel modules, imported once here so that no child pays for
    them (a module of @triton.jit kernels parses their source as it imports)."""
    import importlib
    import pkgutil

    import torch  # noqa: F401
    import triton  # noqa: F401
    import triton.language  # noqa: F401

    from runtime_service.model import kernels

    for module in pkgutil.iter_modules(kernels.__path__):
        try:
            importlib.import_module(f"{kernels.__name__}.{module.name}")
        except Exception:  # noqa: BLE001 - a child imports what it needs, or reports why not
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
