"""One Triton cache key per kernel, whichever kernel a process launches first.

Triton (3.6) keys a compiled kernel by its source, its callees' keys and the `tl.constexpr`
module globals it reads, its callees' included. It copies a callee's globals into the caller's
key only where the callee's own key has already been computed; where the caller comes first,
they are left out. So a kernel calling `pdl.await_previous_kernel` (which reads `WAIT`) had one
key in a pod, where an earlier kernel had computed the callee's key, and another in a compile
worker's fork, where it came first. The pod found none of the workers' kernels in the file cache
and compiled 96 of its 97 again (bench/NOTES.md, run 23a: a fresh node's first pod took 60.9 s
against 34.4 s), and a pod that took its kernels from the store could miss them the same way.

`helper` computes a called function's key as the module defines it, so it is there before any
caller's in every process. Each @triton.jit function that other kernels call and that reads a
module global (itself or through its callees) takes it, after its own callees are defined;
tests/unit/runtime_service/model/test_kernel_cache_keys.py checks every kernel's key both ways.
"""

from __future__ import annotations


def helper(function):
    """Decorator (outside @triton.jit): computes the function's cache key now. Under Triton's
    interpreter (TRITON_INTERPRET=1) there is no key, and nothing to do."""
    getattr(function, "cache_key", None)
    return function
