"""Host lists to device tensors without stalling the host.

A plain `torch.tensor(values, device="cuda")` copies from pageable memory and then waits for
the whole stream, so preparing step n+1 would wait for step n's forward to end. Copying through
pinned memory with non_blocking=True queues the transfer behind the step instead; PyTorch's
pinned allocator keeps the buffer alive until the copy has run.
"""

from __future__ import annotations

import torch


def upload(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` (a list, or nested lists of equal length) as a tensor on `device`."""
    tensor = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return tensor if device.type == "cpu" else tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
