"""Arrival counters for kernels whose last program to finish a piece of work combines it: the
split-K decode attention (paged_attention.py, `fused_combine`) and the fp8 one-row linear's
fused split sums (fp8_row_gemv.py).

One zeroed int32 buffer per device, grown (never shrunk) when a launch needs more. Each launch
leaves every count it used at 0, so the buffer is shared by every kernel, layer, step and graph
replay on the device.

Rules: (1) the buffer must already be large enough when a CUDA graph is captured: a graph's
allocation would come from its private pool and its zeroing would only be recorded, so `counts_for`
raises instead. Warm up at the largest size before capturing (DecodeGraphs does, largest first;
the GEMV tuners run every shape eagerly first). (2) A buffer that is outgrown stays alive, since
graphs captured earlier hold its address. (3) One counting launch at a time per device: launches
on concurrent streams would share counts. The engine runs its forward on one stream.
"""

from __future__ import annotations

import torch
import triton

_counts: dict[torch.device, torch.Tensor] = {}
_retired: list[torch.Tensor] = []


def counts_for(device: torch.device, num_counters: int) -> torch.Tensor:
    """At least `num_counters` zeroed counters on `device` (see the module doc for the rules)."""
    counts = _counts.get(device)
    if counts is not None and counts.numel() >= num_counters:
        return counts
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"a launch needs {num_counters} arrival counters on {device} but there are "
            f"{0 if counts is None else counts.numel()}; run it at this size before capturing "
            f"a CUDA graph")
    if counts is not None:
        _retired.append(counts)
    counts = torch.zeros(max(4096, triton.next_power_of_2(num_counters)), dtype=torch.int32,
                         device=device)
    _counts[device] = counts
    return counts
