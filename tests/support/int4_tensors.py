"""Random int4 weights for the CUDA kernel tests: the contract's triple (qweight uint8 [N, K/2],
scales [N, K/G] in the activations' dtype, zero points uint8 [N, K/G]) and the same weight in
the layout the kernels read (`pack_for_device`)."""

from __future__ import annotations

import torch


def int4_weight(n: int, k: int, group: int, dtype, generator: torch.Generator) -> tuple:
    """(qweight, scales, zeros) on `generator`'s device, scales in 0.002-0.022."""
    device = generator.device
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=device,
                            generator=generator)
    scales = (torch.rand(n, k // group, device=device, generator=generator) * 0.02
              + 0.002).to(dtype)
    zeros = torch.randint(0, 16, (n, k // group), dtype=torch.uint8, device=device,
                          generator=generator)
    return qweight, scales, zeros


def packed_int4(qweight, scales, zeros) -> tuple:
    """The int4 triple as the CUDA kernels take it (`pack_for_device`'s layout)."""
    from runtime_service.model.kernels.quant_linear import pack_for_device

    packed = pack_for_device("int4", {"qweight": qweight, "scales": scales, "zeros": zeros})
    return packed["qweight"], packed["scales"], packed["zeros"]
