"""Quantized weights inside the parallel linear layers: what tensors a layer holds for each
algorithm, and the matmul over them.

A quantized layer holds `qweight`, `scales` (and `zeros` for int4) in place of `weight`, in the
engine format's layout (layers/quantize.py). On CUDA with the Triton kernels available the
matmul is the fused kernel in kernels/quant_linear.py (imported only there); everywhere else it
is plain torch: int8 decode rows through `torch._weight_int8pack_mm`, everything else
dequantize then matmul.
FP8 also rounds its activations per row to E4M3 on the CPU, so both devices compute the same
function and the CPU quality figures hold for the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runtime_service.errors import InvalidRequest
from runtime_service.model import kernels
from runtime_service.format.engine_config import INT4_GROUP_SIZES as GROUP_SIZES
from runtime_service.model.layers.quantize import (dequantize_int4,
                                                   dequantize_per_channel,
                                                   fake_quantize_fp8_rows, quantize_fp8,
                                                   quantize_int4, quantize_int8)

# Engine quant algorithm -> the kind of weights its linears hold.
WEIGHT_KINDS = {"W4A16": "int4", "W4A16_AWQ": "int4", "W8A16": "int8", "FP8": "fp8"}
QUANTIZED_SUFFIXES = ("qweight", "scales", "zeros")


@dataclass(frozen=True)
class WeightQuant:
    """How a layer's weights are stored: kind "int4" (grouped, with zeros), "int8" or "fp8"."""

    kind: str
    group_size: int = 128

    def __post_init__(self):
        if self.kind not in ("int4", "int8", "fp8"):
            raise InvalidRequest(f"weight kind must be int4, int8 or fp8, got {self.kind!r}")
        if self.kind == "int4" and self.group_size not in GROUP_SIZES:
            raise InvalidRequest(
                f"int4 group_size must be one of {GROUP_SIZES}, got {self.group_size}")

    @classmethod
    def for_algo(cls, algo: str, group_size: int) -> "WeightQuant | None":
        """None for an unquantized engine ("NONE")."""
        kind = WEIGHT_KINDS.get(algo)
        return cls(kind, group_size) if kind else None


@dataclass(frozen=True)
class Fp8Rows:
    """Rows already quantized to e4m3 as an FP8 linear quantizes its input (per row: scale
    max(amax|x| / 448, 1e-12), codes e4m3(x / scale)): what a norm hands a linear that
    `takes_fp8_rows`, so the linear runs no quantizing launch. `dtype` is the rows' own, the
    dtype the linear's output comes in."""

    codes: torch.Tensor         # [M, K] float8_e4m3fn
    scales: torch.Tensor        # [M] float32
    dtype: torch.dtype


def _fixed(tensor: torch.Tensor) -> nn.Parameter:
    """A parameter whose dtype is part of the format: the loader never casts it to the engine
    dtype (codes, and the float32 per-channel scales)."""
    param = nn.Parameter(tensor, requires_grad=False)
    param.keeps_dtype = True
    return param


def add_quantized_weight(module: nn.Module, quant: WeightQuant, out_features: int,
                         in_features: int) -> None:
    """Registers the quantized tensors of an [out_features, in_features] weight on `module`."""
    n, k = out_features, in_features
    if quant.kind == "int4":
        module.qweight = _fixed(torch.empty(n, k // 2, dtype=torch.uint8))
        module.scales = nn.Parameter(torch.empty(n, k // quant.group_size), requires_grad=False)
        module.zeros = _fixed(torch.empty(n, k // quant.group_size, dtype=torch.uint8))
        return
    dtype = torch.int8 if quant.kind == "int8" else torch.float8_e4m3fn
    module.qweight = _fixed(torch.empty(n, k, dtype=dtype))
    module.scales = _fixed(torch.empty(n, dtype=torch.float32))


def quantize_weight(w: torch.Tensor, quant: WeightQuant,
                    scale_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{suffix: tensor} that `add_quantized_weight` holds, for a full float weight [N, K]; int4
    scales come in `scale_dtype` (the engine dtype)."""
    if quant.kind == "int4":
        return quantize_int4(w, quant.group_size, scale_dtype)
    return quantize_int8(w) if quant.kind == "int8" else quantize_fp8(w)


def dequantized_weight(module: nn.Module, quant: WeightQuant, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight [N, K] in `dtype` (for the CPU path and for tests)."""
    if quant.kind == "int4":
        qweight = module.qweight
        if getattr(module, "packed_for_kernels", False):
            from runtime_service.model.kernels import quant_linear
            qweight = quant_linear.contract_layout(
                "int4", {"qweight": qweight, "scales": module.scales})["qweight"]
        return dequantize_int4(qweight, module.scales.to(dtype), module.zeros, quant.group_size)
    return dequantize_per_channel(module.qweight, module.scales, dtype)


def quantized_linear(module: nn.Module, quant: WeightQuant, x: torch.Tensor,
                     bias: torch.Tensor | None = None, row_max=None,
                     gated: bool = False, gate_amax: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ W^T (+ bias) for the layer's quantized W. A row-parallel layer, whose x is
    a slice of each row, passes `row_max` (an all-reduce max over its ranks) so that FP8
    scales every row by its whole max |x|, as a single rank does. `gated`
    (only where `forms_gate_up` says so): x is SwiGLU's [gate | up] and the input
    silu(gate) * up, with `gate_amax` what `quantized_gate_up` gave beside it, if anything."""
    if isinstance(x, Fp8Rows):
        from runtime_service.model.kernels import quant_linear
        return quant_linear.fp8_linear_of_codes(x.codes, x.scales, module.qweight,
                                                module.scales, bias, x.dtype)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if _on_kernels(module, quant, x2):
        y = _cuda_linear(module, quant, x2, bias, gated, row_max, gate_amax)
    else:
        if gated:
            raise ValueError("only the CUDA fp8 kernels take a gated x (forms_gate_up)")
        y = _portable_linear(module, quant, x2, bias, row_max)
    return y.reshape(*shape[:-1], y.shape[-1])


def quantized_gate_up(module: nn.Module, quant: WeightQuant, x: torch.Tensor,
                      bias: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`quantized_linear` of SwiGLU's fused [gate | up] projection, and, where one CUDA row of
    fp8 weights can give them from the same launch, the maxima of |silu(gate) * up| over its
    column blocks, from which the down projection takes its row scale (None otherwise)."""
    x2 = None if isinstance(x, Fp8Rows) else x.reshape(-1, x.shape[-1])
    if quant.kind != "fp8" or x2 is None or not _on_kernels(module, quant, x2):
        return quantized_linear(module, quant, x, bias), None
    from runtime_service.model.kernels import quant_linear
    # more rows than one: fp8_gate_up runs the plain linear and gives no maxima
    y, amax = quant_linear.fp8_gate_up(x2, module.qweight, module.scales, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1]), amax


def forms_gate_up(module: nn.Module, quant: WeightQuant, gate_up: torch.Tensor) -> bool:
    """True where the layer's matmul forms SwiGLU's silu(gate) * up itself as it reads
    [gate | up]: fp8 weights on the CUDA kernels, where the launch that quantizes the rows
    forms it (one launch fewer per layer and step, bit for bit the same)."""
    rows = gate_up.reshape(-1, gate_up.shape[-1])
    return quant.kind == "fp8" and _on_kernels(module, quant, rows)


def takes_fp8_rows(module: nn.Module, quant: WeightQuant, x: torch.Tensor) -> bool:
    """True where the layer would quantize x's rows to e4m3 in a launch of its own, so a norm
    before it may hand it `Fp8Rows` instead: fp8 weights on the CUDA kernels, two rows or more
    (one row takes the fused one-row kernels, which find their scale as they read x)."""
    rows = x.reshape(-1, x.shape[-1])
    return quant.kind == "fp8" and rows.shape[0] > 1 and _on_kernels(module, quant, rows)


def _on_kernels(module: nn.Module, quant: WeightQuant, x2: torch.Tensor) -> bool:
    return (x2.is_cuda and kernels.available() and x2.dtype in KERNEL_DTYPES
            and (quant.kind != "int4" or getattr(module, "packed_for_kernels", False)))


# The dtypes the CUDA kernels take; a float32 engine on CUDA (the exact tier the tests compare
# with transformers) runs the portable path, whose weights have the same layout.
KERNEL_DTYPES = (torch.bfloat16, torch.float16)

# torch's CPU int8 matmul beats dequantize-then-matmul only for a few rows (measured: 1.7 ms vs
# 5.8 ms at 1 row, even at 4, 4.5x slower at 16 rows, 120x at 512; SmolLM2's gate_up).
INT8PACK_MAX_ROWS = 4


def _portable_linear(module, quant: WeightQuant, x: torch.Tensor, bias, row_max
                     ) -> torch.Tensor:
    """Any device and dtype: torch's int8 matmul for a few CPU rows, else the dequantized
    weight (FP8 activations fake-quantized per row first, as the kernels quantize them)."""
    if (quant.kind == "int8" and not x.is_cuda and x.shape[0] <= INT8PACK_MAX_ROWS
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)):
        y = torch._weight_int8pack_mm(x, module.qweight, module.scales.to(x.dtype))
        return y + bias if bias is not None else y
    if quant.kind == "fp8":
        amax = x.float().abs().amax(dim=-1, keepdim=True)
        x = fake_quantize_fp8_rows(x, row_max(amax) if row_max else amax)
    return nn.functional.linear(x, dequantized_weight(module, quant, x.dtype), bias)


def _cuda_linear(module, quant: WeightQuant, x: torch.Tensor, bias, gated: bool = False,
                 row_max=None, gate_amax=None) -> torch.Tensor:
    from runtime_service.model.kernels import quant_linear
    if gated and (quant.kind != "fp8" or row_max is not None):
        raise ValueError("only fp8 weights of a whole row take a gated x")
    if quant.kind == "fp8" and row_max is not None:
        y = quant_linear.fp8_linear_split_row(x, module.qweight, module.scales, row_max)
        return y if bias is None else y + bias
    if quant.kind == "int4":
        return quant_linear.int4_linear(x, module.qweight, module.scales, module.zeros,
                                        quant.group_size, bias)
    if quant.kind == "int8":
        return quant_linear.int8_linear(x, module.qweight, module.scales, bias)
    return quant_linear.fp8_linear(x, module.qweight, module.scales, bias, gated, gate_amax)


def pack_for_device(module: nn.Module, quant: WeightQuant) -> None:
    """Repacks the layer's tensors once, at load time, into the layout the CUDA kernels read
    (int4 reorders the nibbles of each group), where the kernels will run: on CUDA, with Triton,
    and for int4 with scales in a kernel dtype (a float32 engine takes the portable path).
    `packed_for_kernels` marks the module, so `dequantized_weight` still reads it."""
    if not (module.qweight.is_cuda and kernels.available()) or getattr(
            module, "packed_for_kernels", False):
        return
    if quant.kind == "int4" and module.scales.dtype not in KERNEL_DTYPES:
        return
    from runtime_service.model.kernels import quant_linear
    names = [n for n in QUANTIZED_SUFFIXES if hasattr(module, n)]
    packed = quant_linear.pack_for_device(quant.kind, {n: getattr(module, n).data for n in names})
    for name, tensor in packed.items():
        getattr(module, name).data = tensor
    module.packed_for_kernels = True
