"""Programmatic dependent launch (PDL): the next kernel launches while this one finishes.

A decode step is ~290 launches, and on an H200 the step's wall time exceeds its kernels' GPU
time by about 0.22 ms at batch 1, about 0.75 us between two kernels (bench/NOTES.md, run 21a).
On Hopper a kernel launched with the programmatic-stream-serialization attribute may start
before the kernel ahead of it in the stream has finished; inside a CUDA graph the capture makes
that a programmatic edge. Such a kernel must not touch memory until the one ahead has
finished: its first instruction is `griddepcontrol.wait` (`await_previous_kernel`), which
returns once every kernel it depends on has completed and its writes are visible. So what
overlaps is the launch, not the work, and the order of every read and write is the stream's.

When the next kernel launches is the trigger's choice (KILN_PDL_TRIGGER). "exit", the default:
once each of this kernel's programs has exited (no `griddepcontrol.launch_dependents`), so the
next one's launch overlaps this one's last memory flush and teardown. "start": each program
triggers as it starts, so the next kernel's programs take SM slots while this one's last wave
runs, and spin in their wait. On an H100, same call and tiles (bench/NOTES.md, run 31), the
start trigger cost bf16 batch 1 2.8% (5.58 against 5.43 ms a token), FP8 + KV FP8 at 256 x
128/128 2.5% and W4A16 at 64 x 128/128 8-9%, and saved W4A16 batch 1 1.5%: programs placed
while the kernel ahead still holds SMs evidently crowd onto the free ones.

The rule the kernels keep: every Kiln Triton kernel starts with `await_previous_kernel()`, and
every launch passes `**LAUNCH` (tests/unit/runtime_service/model/test_pdl_rule.py checks both
in the source). A kernel launched with the attribute but without the wait would race.

On by default from sm_90 (KILN_PDL unset or "auto"); KILN_PDL=0 turns it off, 1 asks for it on
any GPU. On an H100, against it off in the same call (bench/NOTES.md, run 31d), it took 2.5% off
bf16's batch-1 time per token, 4.3% off FP8's and 5.7% off W4A16's, and gave 2-3.5% more
tokens/s at 64 and 256 streams; the whole GPU tier passed with it on (runs 25b, 31c). The instruction needs sm_90 or newer, and the
setting is resolved once, at import, because the kernels take it as a compile-time constant:
the compile workers are handed the resolved settings, so they never open the GPU to ask and
compile under the same keys.
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
TRIGGER_ENV = "KILN_PDL_TRIGGER"
TRIGGERS = ("exit", "start")


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


def _trigger() -> str:
    """KILN_PDL_TRIGGER: "exit" (unset or empty) or "start"; anything else is named and taken
    as "exit"."""
    setting = os.environ.get(TRIGGER_ENV, "") or "exit"
    if setting not in TRIGGERS:
        logging.getLogger("kiln.kernels").warning("%s=%r is not exit or start: exit",
                                                  TRIGGER_ENV, setting)
        return "exit"
    return setting


ENABLED = _enabled()
TRIGGER = _trigger()
# Compile-time constants of every kernel (Triton folds the branches away).
WAIT: tl.constexpr = tl.constexpr(ENABLED)
TRIGGER_AT_START: tl.constexpr = tl.constexpr(ENABLED and TRIGGER == "start")
# Launch options for every kernel launch: Triton's launcher then sets the attribute.
LAUNCH: dict = {"launch_pdl": True} if ENABLED else {}


@jit_keys.helper
@triton.jit
def await_previous_kernel():
    """The first statement of every Kiln kernel: with PDL on, waits until the kernels ahead in
    the stream have finished (and with the start trigger then lets the next one launch); with
    it off, nothing."""
    if WAIT:
        gdc_wait()
    if TRIGGER_AT_START:
        gdc_launch_dependents()
