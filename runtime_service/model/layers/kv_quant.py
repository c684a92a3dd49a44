"""An INT8 or FP8 KV cache: codes in today's cache shape, a float32 scale per token and head.

`QuantizedKVCache` stands where a cache tensor stood ([num_blocks, block_size, kv_heads,
head_dim]) and keeps `scales` [num_blocks, block_size, kv_heads] beside it. Indexing reads
dequantized values in the model's dtype and assigning quantizes, so the code that moves whole
blocks (copy-on-write for beams and reuse, StreamingLLM's rotation) works unchanged and moves
or requantizes the scales with their blocks. A token's scale is amax(|x|) over its head / 127
(int8) or / 448 (fp8), at least 1e-8; int8 codes are rounded and clamped, fp8 ones cast.
Requantizing dequantized values reproduces the codes, so block copies are exact.
"""

from __future__ import annotations

import torch

from runtime_service.errors import InvalidRequest
from runtime_service.model.layers.quantize import FP8_MAX, INT8_MAX, MIN_SCALE

KV_CODE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_CODE_MAX = {torch.int8: float(INT8_MAX), torch.float8_e4m3fn: FP8_MAX}


def quantize_kv(x: torch.Tensor, code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., head_dim] -> (codes like x, float32 scales [...]) with one scale per last-dim row."""
    xf = x.float()
    scales = (xf.abs().amax(dim=-1) / _CODE_MAX[code_dtype]).clamp(min=MIN_SCALE)
    scaled = xf / scales[..., None]
    if code_dtype == torch.int8:
        codes = scaled.round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        codes = scaled.clamp(-FP8_MAX, FP8_MAX).to(code_dtype)
    return codes, scales


def dequantize_kv(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.float() * scales[..., None]).to(dtype)


class QuantizedKVCache:
    """One layer's K or V cache in int8 / fp8 codes with per-token, per-head scales."""

    def __init__(self, shape: tuple[int, ...], code_dtype: torch.dtype, dtype: torch.dtype,
                 device: torch.device | str):
        self.codes = torch.zeros(shape, dtype=code_dtype, device=device)
        # an unwritten slot reads as the zeros it would quantize to, so copies stay exact
        self.scales = torch.full(shape[:-1], MIN_SCALE, dtype=torch.float32, device=device)
        self.dtype = dtype                # what reads return: the model's dtype

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def __getitem__(self, index) -> torch.Tensor:
        return dequantize_kv(self.codes[index], self.scales[index], self.dtype)

    def _bytes(self) -> torch.Tensor:
        """The codes as bytes: CPU indexing kernels lack float8 (moving bytes is the same)."""
        return self.codes.view(torch.uint8) if self.codes.dtype.itemsize == 1 else self.codes

    def __setitem__(self, index, value: torch.Tensor) -> None:
        codes, scales = quantize_kv(value, self.codes.dtype)
        self._bytes()[index] = codes.view(torch.uint8)
        self.scales[index] = scales

    def write(self, slot_mapping: torch.Tensor, x: torch.Tensor) -> None:
        """Stores x [T, kv_heads, head_dim] at flat slots (block * block_size + offset)."""
        codes, scales = quantize_kv(x, self.codes.dtype)
        num_blocks, block_size = self.codes.shape[:2]
        self._bytes().view(num_blocks * block_size, *self.codes.shape[2:]).index_copy_(
            0, slot_mapping, codes.view(torch.uint8))
        self.scales.view(num_blocks * block_size, self.scales.shape[2]).index_copy_(
            0, slot_mapping, scales)


def allocate_kv_cache(shape: tuple[int, ...], kv_cache_dtype: str, dtype: torch.dtype,
                      device: torch.device | str):
    """A zeroed cache tensor of `dtype` ("auto") or a QuantizedKVCache ("int8", "fp8")."""
    if kv_cache_dtype == "auto":
        return torch.zeros(shape, dtype=dtype, device=device)
    if kv_cache_dtype not in KV_CODE_DTYPES:
        raise InvalidRequest(f"kv_cache_dtype must be auto, int8 or fp8, got {kv_cache_dtype!r}")
    return QuantizedKVCache(shape, KV_CODE_DTYPES[kv_cache_dtype], dtype, device)


def kv_bytes_per_value(kv_cache_dtype: str, dtype: torch.dtype, head_dim: int) -> float:
    """Cache bytes per stored value, counting a quantized cache's scale (4 bytes per head)."""
    if kv_cache_dtype == "auto":
        return torch.empty((), dtype=dtype).element_size()
    return 1 + 4 / head_dim
