"""Weight quantization arithmetic, written once for the builder (which quantizes) and the layers
(which dequantize on the CPU): int4 with per-group zero points, int8 and FP8 per output channel.

The stored layouts are the engine format's (docs/ARCHITECTURE.md, "Quantized tensors"):
- int4: `qweight` uint8 [N, K // 2] (low nibble = even input column, high nibble = odd one),
  `scales` [N, K // G] in the engine dtype, `zeros` uint8 [N, K // G] in 0..15;
  w = (q - zero) * scale.
- int8: `qweight` int8 [N, K], `scales` float32 [N]; w = q * scale.
- fp8: `qweight` float8_e4m3fn [N, K], `scales` float32 [N]; w = q * scale.
Quantization works in float32 whatever the source dtype, so a bfloat16 and a float32 source give
the same codes.
"""

from __future__ import annotations

import torch

INT4_MAX = 15
INT8_MAX = 127
FP8_MAX = 448.0                      # largest finite float8_e4m3fn
MIN_SCALE = 1e-8


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] values in 0..15 -> uint8 [N, K // 2]: column 2j in the low nibble, 2j+1 high."""
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K // 2] -> uint8 [N, K], the inverse of `pack_int4`."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def int4_group_range(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (min, max) of w [N, K] in float32, each [N, K // G], always spanning zero so
    that zero stays exactly representable (as in AWQ's reference quantizer)."""
    groups = w.float().reshape(w.shape[0], -1, group_size)
    low = groups.amin(dim=-1).clamp(max=0.0)
    high = groups.amax(dim=-1).clamp(min=0.0)
    return low, high


def int4_codes(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int) -> torch.Tensor:
    """Unpacked codes of w [N, K] for given per-group scales and zero points (float32 [N, K//G])."""
    groups = w.float().reshape(w.shape[0], -1, group_size)
    q = torch.round(groups / scales[..., None]) + zeros[..., None]
    return q.clamp(0, INT4_MAX).reshape(w.shape)


def int4_params(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points (float32) that map [low, high] onto 0..15."""
    scales = ((high - low) / INT4_MAX).clamp(min=MIN_SCALE)
    zeros = torch.round(-low / scales).clamp(0, INT4_MAX)
    return scales, zeros


def fake_quantize_int4(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """w after an int4 round trip (float32), for searches that score candidate weights."""
    scales, zeros = int4_params(*int4_group_range(w, group_size))
    codes = int4_codes(w, scales, zeros, group_size).reshape(w.shape[0], -1, group_size)
    return ((codes - zeros[..., None]) * scales[..., None]).reshape(w.shape)


def quantize_int4(w: torch.Tensor, group_size: int,
                  scale_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Round-to-nearest int4 of w [N, K] with a scale and zero point per group."""
    low, high = int4_group_range(w, group_size)
    scales, _ = int4_params(low, high)
    stored = scales.to(scale_dtype)
    # A scale rounded down in a narrow dtype would push the group's extremes past code 15:
    # round it up instead, and place the zero point for the stored scale.
    stored = torch.where(stored.float() < scales,
                         torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored)
    scales = stored.float()
    zeros = torch.round(-low / scales).clamp(0, INT4_MAX)
    codes = int4_codes(w, scales, zeros, group_size)
    return {"qweight": pack_int4(codes), "scales": stored, "zeros": zeros.to(torch.uint8)}


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """The weight [N, K] in the scales' dtype."""
    codes = unpack_int4(qweight).to(scales.dtype)
    n, k = codes.shape
    w = (codes.view(n, k // group_size, group_size) - zeros.to(scales.dtype)[..., None])
    return (w * scales[..., None]).view(n, k)


def quantize_int8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric per-output-channel int8 of w [N, K]."""
    w = w.float()
    scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=MIN_SCALE)
    q = torch.round(w / scales[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return {"qweight": q, "scales": scales}


def quantize_fp8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-output-channel E4M3 of w [N, K]: each row's largest |w| maps to 448."""
    w = w.float()
    scales = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=MIN_SCALE)
    q = (w / scales[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {"qweight": q, "scales": scales}


def fake_quantize_fp8_rows(x: torch.Tensor, row_amax: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] through a dynamic per-row E4M3 round trip, in x's dtype: what the FP8 layer does
    to its activations before the matmul. `row_amax` [M, 1] overrides each row's max |x| (a
    row-parallel layer passes the whole row's, so every rank scales alike)."""
    xf = x.float()
    if row_amax is None:
        row_amax = xf.abs().amax(dim=-1, keepdim=True)
    scale = (row_amax / FP8_MAX).clamp(min=MIN_SCALE)
    return ((xf / scale).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def dequantize_per_channel(qweight: torch.Tensor, scales: torch.Tensor,
                           dtype: torch.dtype) -> torch.Tensor:
    """int8 or fp8 codes [N, K] times per-row scales [N], in `dtype`."""
    return (qweight.float() * scales.float()[:, None]).to(dtype)
