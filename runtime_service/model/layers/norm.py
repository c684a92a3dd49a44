"""RMSNorm, computed in float32 as transformers' LlamaRMSNorm does, so outputs match bit for bit.

On CUDA one-pass Triton kernels (same roundings) replace the chains of small torch ops, including
the residual add that precedes every norm inside a decoder layer, and, before an FP8 linear that
would quantize the normalised rows in a launch of its own, that quantization too (`forward_for`).
"""

from __future__ import annotations

import torch
from torch import nn

from runtime_service.model import kernels
from runtime_service.model.layers.quantized_linear import Fp8Rows


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def _use_kernel(self, x: torch.Tensor) -> bool:
        return kernels.available(x) and x.dtype == self.weight.dtype and x.dtype != torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernel(x):
            from runtime_service.model.kernels.rms_norm import rms_norm
            return rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward_with_residual(self, x: torch.Tensor,
                              residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(x + residual), x + residual): the same values as the two steps, in one launch."""
        if self._use_kernel(x):
            from runtime_service.model.kernels.rms_norm import add_rms_norm
            return add_rms_norm(x, residual, self.weight, self.eps)
        summed = x + residual
        return self(summed), summed

    def forward_for(self, linear: nn.Module, x: torch.Tensor, residual: torch.Tensor | None
                    ) -> tuple["torch.Tensor | Fp8Rows", torch.Tensor]:
        """(norm of h, h) for h = x + residual (x alone when residual is None), with the norm in
        the form `linear` reads: `Fp8Rows` where it would quantize its rows to e4m3 in a launch
        of its own (`linear.takes_fp8_rows`), the normalised tensor otherwise. The same values
        either way; the first saves that launch."""
        if not (self._use_kernel(x) and linear.takes_fp8_rows(x)):
            if residual is None:
                return self(x), x
            return self.forward_with_residual(x, residual)
        from runtime_service.model.kernels.rms_norm import add_rms_norm, rms_norm
        if residual is None:
            codes, scales = rms_norm(x, self.weight, self.eps, to_fp8=True)
            summed = x
        else:
            codes, scales, summed = add_rms_norm(x, residual, self.weight, self.eps, to_fp8=True)
        return Fp8Rows(codes, scales, x.dtype), summed
