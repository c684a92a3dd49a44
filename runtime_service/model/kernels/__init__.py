"""Triton kernels, quarantined: the only package in Kiln that imports triton.

Each module holds one kernel family: the kernel, a launcher that checks shapes and strides, and a
plain-torch reference the tests compare against. Nothing here is imported at package import time,
so `import runtime_service.model.kernels` works on a machine without triton; callers ask `available()`
first and import the kernel module only on the CUDA path.
"""

from __future__ import annotations

import functools
import os

_disabled_depth = 0

# The decode GEMV's largest row tile (kernels/gemv.py); here so that callers can read it without
# importing triton.
GEMV_ROW_LIMIT = 64


@functools.lru_cache(maxsize=1)
def triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available(tensor=None) -> bool:
    """True when the fused kernels should run for `tensor` (a CUDA tensor, triton installed,
    not switched off by `KILN_DISABLE_KERNELS=1` or `disabled()`)."""
    if tensor is not None and not tensor.is_cuda:
        return False
    if _disabled_depth or os.environ.get("KILN_DISABLE_KERNELS") == "1":
        return False
    return triton_installed()


class disabled:
    """Context manager: inside it (process-wide) the layers take their plain-torch paths."""

    def __enter__(self):
        global _disabled_depth
        _disabled_depth += 1
        return self

    def __exit__(self, *exc):
        global _disabled_depth
        _disabled_depth -= 1
        return False
