"""Programmatic dependent launch (PDL): the next kernel launches while this one finishes.

A decode step is ~290 launches, and on an H200 the step's wall time exceeds its kernels' GPU
time by about 0.22 ms at batch 1, about 0.75 us between two kernels (bench/NOTES.md, run 21a).
On Hopper a kernel launched with the programmatic-stream-serialization attribute may start
before the kernel ahead of it in the stream has finished; inside a CUDA graph the capture makes
that a programmatic edge. Such a kernel must not touch memory until the one ahead has
finished: its first instruction is `griddepcontrol.wait` (`await_previous_kernel`), which
returns once every kernel it depends on has completed and its writes are visible. Each kernel
then lets its dependants launch at once (`griddepcontrol.launch_dependents`): their programs
take SM slots only after all of this kernel's programs have started, and spin in their wait.
So what overlaps is the launch, not the work, and the order of every read and write is the
stream's.

The rule the kernels keep: every Kiln Triton kernel starts with `await_previous_kernel()`, and
every launch passes `**LAUNCH`, or `**launch_options(...)` where a launch may keep plain stream
order (tests/unit/runtime_service/model/test_pdl_rule.py checks both in the source). A kernel
launched with the attribute but without the wait would race.

On by default from sm_90 (KILN_PDL unset or "auto"); KILN_PDL=0 turns it off, 1 asks for it on
any GPU. On an H100 it took 1.4% off bf16's batch-1 time per token and 2.3% off FP8's, and moved
64 streams by about their run-to-run spread (bench/NOTES.md, run 24b); the whole GPU tier passed
with it on (run 25b) before it became the default. The instruction needs sm_90 or newer, and the
setting is resolved once, at import, because the kernels take it as a compile-time constant:
the compile workers are handed the resolved 0 or 1, so they never open the GPU to ask.
Triton's interpreter (TRITON_INTERPRET=1) runs no inline assembly: there it is always off.
"""

from __future__ import annotations

import logging
import os

import triton
import triton.language as tl

from runtime_service.model.kernels import jit_keys
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

ENV = "KILN_PDL"


# Whether Triton's interpreter runs the kernels (TRITON_INTERPRET=1, read as Triton reads it, at
# import): it runs no inline assembly or libdevice calls, and one program at a time. A
# compile-time constant for the kernels that take another path there (rotary.py, paged_decode.py).
INTERPRETED: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


def _enabled() -> bool:
    if INTERPRETED:
        return False
    setting = os.environ.get(ENV, "auto")
    if setting in ("0", "1"):
        return setting == "1"
    if setting not in ("", "auto"):
        logging.getLogger("kiln.kernels").warning("%s=%r is not 0, 1 or auto: auto", ENV, setting)
    return _hopper_or_newer()


def _hopper_or_newer() -> bool:
    """Whether this process's GPU runs `griddepcontrol` (sm_90 and newer)."""
    try:
        import torch

        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)
    except Exception:  # noqa: BLE001 - a driver that cannot say: off, the safe side
        return False


ENABLED = _enabled()
# A compile-time constant of every kernel (Triton folds the branch away when it is off).
WAIT: tl.constexpr = tl.constexpr(ENABLED)
# Launch options for every kernel launch: Triton's launcher then sets the attribute.
LAUNCH: dict = {"launch_pdl": True} if ENABLED else {}


def launch_options(programmatic: bool = True) -> dict:
    """LAUNCH, or none for a launch that keeps plain stream order (`programmatic=False`): that
    kernel starts once the one ahead has finished (its wait then returns at once) and still
    lets the next one launch early. The int4 tensor-core GEMVs (quant_gemv.py's dot and swap
    tiles) launch so: with the attribute, W4A16 at 64 x 128/128 ran 8.7% slower on an H100
    (bench/NOTES.md, run 30h); fp8_gemm.py's tiles showed no such loss (run 30i)."""
    return LAUNCH if programmatic else {}


@jit_keys.helper
@triton.jit
def await_previous_kernel():
    """The first statement of every Kiln kernel: with PDL on, waits until the kernels ahead in
    the stream have finished, then lets the next one launch; with it off, nothing."""
    if WAIT:
        gdc_wait()
        gdc_launch_dependents()
