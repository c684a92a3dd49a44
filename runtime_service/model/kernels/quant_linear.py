"""Quantized linear layers on the GPU: int4 (W4A16, grouped, zero points), int8 (W8A16) and fp8
(e4m3 weights, per-token e4m3 activations), each beside its plain-torch reference.

The tensors follow the quantized-tensor contract (docs/ARCHITECTURE.md):
- int4: qweight uint8 [N, K/2] (low nibble = even column), scales [N, K/G] in the engine dtype,
  zeros uint8 [N, K/G]; w = (q - z) * s. The CUDA kernels read qweight reordered within each
  group by `pack_for_device`.
- int8: qweight int8 [N, K], scales float32 [N]; w = q * s.
- fp8: qweight float8_e4m3fn [N, K], scales float32 [N]; x is quantized per row at run time to
  e4m3 with scale amax|x| / 448 (at least 1e-12), and y = (xq * sx) @ (q * s)^T.

Up to 64 rows (decode, CUDA-graph safe: no host syncs, fixed-size allocations) run the tuned
dequantizing GEMVs of quant_gemv.py and fp8_row_gemv.py (tiles chosen by quant_tuning.py), which
read each weight once. More rows (prefill) are compute-bound: int4 and int8 dequantize to the
engine dtype and call cuBLAS (one extra pass over the weight, small beside the GEMM), fp8 runs
`torch._scaled_mm` with row-wise scales on GPUs that have fp8 tensor cores. This module imports
triton only inside those paths, so the references and `pack_for_device` work on any machine; on
CPU tensors the public functions run the references.
"""

from __future__ import annotations

import torch

from runtime_service.model.kernels import GEMV_ROW_LIMIT

_DTYPES = (torch.bfloat16, torch.float16)
INT4_GROUP_SIZES = (32, 64, 128)


def pack_for_device(kind: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout the CUDA kernels read, made once at load time; `kind` is "int4", "int8" or
    "fp8". int8 and fp8 keep the contract's layout (made contiguous). int4 (`tensors` holds
    qweight and scales, whose shapes give the group size) reorders each group's nibbles: byte
    j of a group holds its columns j (low nibble) and G/2 + j (high), instead of 2j and 2j + 1.
    Then each half of a group meets a contiguous half of x, and the dot kernels need no
    re-interleaving of the nibbles (bench/NOTES.md, run 16). `contract_layout` undoes it."""
    _check_kind(kind)
    packed = {name: tensor.contiguous() for name, tensor in tensors.items()}
    if kind == "int4":
        qweight = packed["qweight"]
        packed["qweight"] = _regroup_nibbles(qweight, _group_of(qweight, packed["scales"]),
                                             to_halves=True)
    return packed


def contract_layout(kind: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `pack_for_device`: the quantized-tensor contract's layout."""
    _check_kind(kind)
    if kind != "int4":
        return dict(tensors)
    qweight = tensors["qweight"]
    return {**tensors, "qweight": _regroup_nibbles(qweight, _group_of(qweight, tensors["scales"]),
                                                   to_halves=False)}


def _check_kind(kind: str) -> None:
    if kind not in ("int4", "int8", "fp8"):
        raise ValueError(f"kind must be 'int4', 'int8' or 'fp8', got {kind!r}")


def _group_of(qweight: torch.Tensor, scales: torch.Tensor) -> int:
    k = qweight.shape[1] * 2
    if scales.dim() != 2 or not scales.shape[1] or k % scales.shape[1]:
        raise ValueError(f"scales {tuple(scales.shape)} give no int4 group size for K = {k}")
    return k // scales.shape[1]


def _regroup_nibbles(qweight: torch.Tensor, group: int, to_halves: bool) -> torch.Tensor:
    """Contract bytes (columns 2j, 2j + 1) <-> group-halves bytes (columns j, G/2 + j)."""
    n = qweight.shape[0]
    nibbles = torch.stack((qweight & 0xF, qweight >> 4), dim=-1)       # [N, K/2, 2]
    if to_halves:
        # column order within a group is (half, j): take each half's j-th nibble as a pair
        columns = nibbles.reshape(n, -1, 2, group // 2)
        low, high = columns[:, :, 0], columns[:, :, 1]
    else:
        # byte j of a group holds columns j and G/2 + j: lay the halves end to end
        halves = nibbles.reshape(n, -1, group // 2, 2)
        columns = torch.cat((halves[..., 0], halves[..., 1]), dim=-1).reshape(n, -1, 2)
        low, high = columns[..., 0], columns[..., 1]
    return (low | (high << 4)).reshape(n, -1).contiguous()


# ---- public entry points -----------------------------------------------------------------------

def int4_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                zeros: torch.Tensor, group_size: int, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
    """x [M, K] (bf16/fp16) times the int4 weight [N, K] (+ bias) -> [M, N] in x's dtype.
    On CUDA, qweight is in `pack_for_device`'s layout; on the CPU in the contract's."""
    _check_int4(x, qweight, scales, zeros, group_size, bias)
    if not x.is_cuda:
        return int4_linear_reference(x, qweight, scales, zeros, group_size, bias)
    if x.shape[0] > GEMV_ROW_LIMIT:
        from runtime_service.model.kernels.quant_convert import dequantize_int4

        weight = dequantize_int4(qweight, scales, zeros, group_size, x.dtype)
        return torch.nn.functional.linear(x, weight, bias)
    from runtime_service.model.kernels import quant_gemv as qg
    from runtime_service.model.kernels import quant_tuning as qt

    rows, k = x.shape
    n = qweight.shape[0]
    key = ("int4", x.device, x.dtype, _bucket(rows), n, k, group_size)
    config = qt.tuned_config(
        key, x, (qweight, scales, zeros),
        qt.int4_candidates(rows, n, k, group_size, qt.sm_count(x.device)),
        lambda x_, w, c, warmup=False: qg.launch_int4(x_, *w, group_size, None, c, warmup))
    return qg.launch_int4(x, qweight, scales, zeros, group_size, bias, config)


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16) times the int8 weight [N, K] (+ bias) -> [M, N] in x's dtype."""
    _check_channel(x, qweight, scales, bias, torch.int8)
    if not x.is_cuda:
        return int8_linear_reference(x, qweight, scales, bias)
    if x.shape[0] > GEMV_ROW_LIMIT:
        y = torch.nn.functional.linear(x, qweight.to(x.dtype)).float() * scales
        return (y if bias is None else y + bias.float()).to(x.dtype)
    return _channel_gemv("int8", x, None, qweight, scales, bias, x.dtype)


def fp8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               bias: torch.Tensor | None = None, gated: bool = False,
               gate_amax: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16), quantized per row to e4m3, times the fp8 weight [N, K] (+ bias)
    -> [M, N] in x's dtype. `gated`: x is SwiGLU's [gate | up], [M, 2K], and the linear's
    input silu(gate) * up, rounded as the activation kernel rounds it; on CUDA the launch that
    quantizes the rows forms it (one row: the fused one-row kernels; more: `quantize_rows_fp8`),
    so there is no activation launch. `gate_amax`: what `fp8_gate_up` gave with this x, from
    which one row's scale comes without a pass over the row."""
    if gated:
        _check_gated(x, qweight)
        if not x.is_cuda:
            return fp8_linear(_silu_and_mul(x), qweight, scales, bias)
    _check_channel(x[:, :x.shape[1] // 2] if gated else x, qweight, scales, bias,
                   torch.float8_e4m3fn)
    if not x.is_cuda:
        return fp8_linear_reference(x, qweight, scales, bias)
    if x.shape[0] <= GEMV_ROW_LIMIT:
        return _fp8_gemv(x, qweight, scales, bias, gated,
                         gate_amax if gated and x.shape[0] == 1 else None)
    from runtime_service.model.kernels.quant_convert import quantize_rows_fp8

    xq, x_scales = quantize_rows_fp8(x, gated=gated)
    return _quantized_rows_matmul(xq, x_scales, qweight, scales, bias, x.dtype)


def fp8_gate_up(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`fp8_linear` of SwiGLU's fused [gate | up] projection (qweight [2I, K]), and for one CUDA
    row the maxima of |silu(gate) * up| over its column blocks from the same launch, which
    `fp8_linear(..., gated=True, gate_amax=...)` takes for the down projection's row scale
    (None where no tile can give them)."""
    if not (x.is_cuda and x.shape[0] == 1):
        return fp8_linear(x, qweight, scales, bias), None
    _check_channel(x, qweight, scales, bias, torch.float8_e4m3fn)
    from runtime_service.model.kernels import fp8_row_gemv as fg
    from runtime_service.model.kernels import quant_tuning as qt

    n, k = qweight.shape
    candidates = [c for c in qt.fp8_candidates(1, n, k, qt.sm_count(x.device))
                  if fg.gives_gate_amax(c, n)]
    if not candidates:
        return fp8_linear(x, qweight, scales, bias), None
    key = ("fp8_gate_up", x.device, x.dtype, 1, n, k)
    config = qt.tuned_config(key, x, (qweight, scales), candidates,
                             lambda x_, w, c, warmup=False:
                             fg.launch_fp8_gate_up(x_, *w, None, c, warmup)[0])
    return fg.launch_fp8_gate_up(x, qweight, scales, bias, config)


def fp8_linear_of_codes(xq: torch.Tensor, x_scales: torch.Tensor, qweight: torch.Tensor,
                        scales: torch.Tensor, bias: torch.Tensor | None,
                        out_dtype: torch.dtype) -> torch.Tensor:
    """`fp8_linear` of rows already quantized (e4m3 codes [M, K], float32 scales [M], as
    `quantize_rows_fp8` gives them; a norm that quantizes its output, kernels/rms_norm.py),
    with the output in `out_dtype`, the rows' own dtype. CUDA only."""
    if out_dtype not in _DTYPES:
        raise ValueError(f"out_dtype must be one of {_DTYPES}, got {out_dtype}")
    _check_channel(xq, qweight, scales, bias, torch.float8_e4m3fn, out_dtype)
    if (x_scales.shape != xq.shape[:1] or x_scales.dtype != torch.float32
            or x_scales.device != xq.device or not x_scales.is_contiguous()):
        raise ValueError(f"x_scales must be a contiguous float32 [{xq.shape[0]}] on "
                         f"{xq.device}, got {x_scales.dtype} {tuple(x_scales.shape)}")
    if xq.shape[0] <= GEMV_ROW_LIMIT:
        return _channel_gemv("fp8_dot", xq, x_scales, qweight, scales, bias, out_dtype)
    return _quantized_rows_matmul(xq, x_scales, qweight, scales, bias, out_dtype)


def fp8_linear_split_row(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                         row_max) -> torch.Tensor:
    """`fp8_linear` of one rank's slice of each row in a row-parallel layer, with each row's
    e4m3 scale taken from the whole row's max |x|: `row_max` turns the slice's per-row maxima
    [M] into the whole row's (an all-reduce max over the ranks), so every rank rounds its
    slice as one rank would round the row (docs/ARCHITECTURE.md, the FP8 contract). The fused
    one-row kernels find their scale from their own slice, so this quantizes first and runs
    the quantize-then-dot path."""
    _check_channel(x, qweight, scales, None, torch.float8_e4m3fn)
    amax = row_max(x.float().abs().amax(dim=-1))
    x_scales = (amax / torch.full_like(amax, 448.0)).clamp_min(1e-12)     # as the kernels
    xq = (x.float() / x_scales[:, None]).to(torch.float8_e4m3fn)
    if x.is_cuda and x.shape[0] <= GEMV_ROW_LIMIT:
        return _channel_gemv("fp8_dot", xq, x_scales, qweight, scales, None, x.dtype)
    return _quantized_rows_matmul(xq, x_scales, qweight, scales, None, x.dtype)


def _quantized_rows_matmul(xq, x_scales, qweight, scales, bias, out_dtype) -> torch.Tensor:
    """(xq * x_scales) @ (qweight * scales)^T (+ bias) for rows already in e4m3: on GPUs with fp8
    tensor cores, a decode batch's rows take the faster of cuBLAS and fp8_gemm.py's tiles (timed
    per shape), longer prefills cuBLAS, or the Triton kernel's widest tile where cuBLAS's
    row-wise path does not take the dtype or shape; elsewhere float32."""
    if not (xq.is_cuda and _has_fp8_tensor_cores(xq.device)):
        y = (xq.float() * x_scales[:, None]) @ (qweight.float() * scales.float()[:, None]).T
        return (y if bias is None else y + bias.float()).to(out_dtype)
    from runtime_service.model.kernels import fp8_gemm
    from runtime_service.model.kernels import quant_tuning as qt

    rows = xq.shape[0]
    n, k = qweight.shape
    candidates = fp8_gemm.fp8_gemm_candidates(rows, n, k, out_dtype)
    if rows > fp8_gemm.FP8_GEMM_ROW_LIMIT:
        config = candidates[0]
    else:
        key = ("fp8_rows", xq.device, out_dtype, _bucket(rows), n, k)
        config = qt.tuned_config(key, xq, (qweight, scales), candidates,
                                 lambda x_, w, c, warmup=False: fp8_gemm.launch_fp8_gemm(
                                     x_, x_scales, *w, None, out_dtype, c, warmup))
    return fp8_gemm.launch_fp8_gemm(xq, x_scales, qweight, scales, bias, out_dtype, config)


def _check_gated(x: torch.Tensor, qweight: torch.Tensor) -> None:
    k = qweight.shape[-1]
    if x.dim() != 2 or x.shape[1] != 2 * k:
        raise ValueError(f"gated x must be [M, 2K] = [gate | up] with K = {k}, got "
                         f"{tuple(x.shape)}")


def _silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: the activation kernel on CUDA, torch's ops elsewhere."""
    if gate_up.is_cuda:
        from runtime_service.model.kernels.activation import silu_and_mul
        return silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def _channel_gemv(kind, x, x_scales, qweight, scales, bias, out_dtype) -> torch.Tensor:
    from runtime_service.model.kernels import quant_gemv as qg
    from runtime_service.model.kernels import quant_tuning as qt

    rows, k = x.shape
    n = qweight.shape[0]
    key = (kind, x.device, out_dtype, _bucket(rows), n, k)
    config = qt.tuned_config(
        key, x, (qweight, scales), qt.channel_candidates(rows, n, k, qt.sm_count(x.device)),
        lambda x_, w, c, warmup=False: qg.launch_channel(x_, x_scales, *w, None, out_dtype, c,
                                                         warmup))
    return qg.launch_channel(x, x_scales, qweight, scales, bias, out_dtype, config)


def _fp8_gemv(x, qweight, scales, bias, gated: bool = False, gate_amax=None) -> torch.Tensor:
    """Decode rows: tuned over the fused one-row kernel and quantize-then-dot, each timed with
    every launch it makes (a gated row with its block maxima given is timed apart)."""
    from runtime_service.model.kernels import fp8_row_gemv as fg
    from runtime_service.model.kernels import quant_tuning as qt

    rows = x.shape[0]
    n, k = qweight.shape
    kind = "fp8_gated_amax" if gate_amax is not None else "fp8_gated" if gated else "fp8"
    key = (kind, x.device, x.dtype, _bucket(rows), n, k)
    config = qt.tuned_config(key, x, (qweight, scales),
                             qt.fp8_candidates(rows, n, k, qt.sm_count(x.device)),
                             lambda x_, w, c, warmup=False: fg.launch_fp8(x_, *w, None, c,
                                                                          warmup, gated,
                                                                          gate_amax))
    return fg.launch_fp8(x, qweight, scales, bias, config, gated=gated, gate_amax=gate_amax)


def _bucket(rows: int) -> int:
    return 1 << (rows - 1).bit_length()


def _has_fp8_tensor_cores(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 9)


# ---- plain-torch references (dequantize, then matmul in float32) -------------------------------

def int4_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """The float32 weight [N, K] of an int4 triple."""
    n = qweight.shape[0]
    q = torch.stack((qweight & 0xF, qweight >> 4), dim=-1).reshape(n, -1).float()
    groups = q.shape[1] // group_size
    q = q.view(n, groups, group_size) - zeros.float()[:, :, None]
    return (q * scales.float()[:, :, None]).view(n, -1)


def _finish_reference(x: torch.Tensor, y: torch.Tensor, bias) -> torch.Tensor:
    return (y if bias is None else y + bias.float()).to(x.dtype)


def int4_linear_reference(x, qweight, scales, zeros, group_size, bias=None):
    return _finish_reference(x, x.float() @ int4_dequantize(qweight, scales, zeros,
                                                            group_size).T, bias)


def int8_linear_reference(x, qweight, scales, bias=None):
    return _finish_reference(x, x.float() @ (qweight.float() * scales.float()[:, None]).T, bias)


def quantize_rows_fp8_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantization: scale = max(amax|x| / 448, 1e-12), xq = e4m3(x / scale)."""
    amax = x.float().abs().amax(dim=-1)
    scales = (amax / torch.full_like(amax, 448.0)).clamp_min(1e-12)   # IEEE, as the kernel
    return (x.float() / scales[:, None]).to(torch.float8_e4m3fn), scales


def fp8_linear_reference(x, qweight, scales, bias=None):
    xq, x_scales = quantize_rows_fp8_reference(x)
    y = (xq.float() * x_scales[:, None]) @ (qweight.float() * scales.float()[:, None]).T
    return _finish_reference(x, y, bias)


# ---- input checks ------------------------------------------------------------------------------

def _check_x(x: torch.Tensor, n: int, k: int, bias, out_dtype=None) -> None:
    """x in a 16-bit dtype, the output's; or, with `out_dtype`, e4m3 codes whose output (and
    bias) come in `out_dtype`."""
    if x.dim() != 2 or x.shape[1] != k or x.shape[0] == 0:
        raise ValueError(f"x must be [M, {k}] with M > 0, got {tuple(x.shape)}")
    dtypes = (torch.float8_e4m3fn,) if out_dtype else _DTYPES
    if x.dtype not in dtypes:
        raise ValueError(f"x must be one of {dtypes}, got {x.dtype}")
    if x.stride(1) != 1:
        raise ValueError("x needs a contiguous last dimension")
    out_dtype = out_dtype or x.dtype
    if bias is not None and (bias.shape != (n,) or bias.dtype != out_dtype
                             or not bias.is_contiguous() or bias.device != x.device):
        raise ValueError(f"bias must be a contiguous [{n}] {out_dtype} tensor on {x.device}; "
                         f"got {tuple(bias.shape)} {bias.dtype} on {bias.device}")


def _check_same_device(x: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.device != x.device:
            raise ValueError(f"x is on {x.device} but {name} on {tensor.device}")
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous (pack_for_device makes it so)")


def _check_int4(x, qweight, scales, zeros, group_size: int, bias) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if qweight.dim() != 2 or qweight.dtype != torch.uint8:
        raise ValueError(f"qweight must be uint8 [N, K/2], got {qweight.dtype} "
                         f"{tuple(qweight.shape)}")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if k % group_size:
        raise ValueError(f"K = {k} is not a multiple of group_size {group_size}")
    groups = (n, k // group_size)
    if scales.shape != groups or scales.dtype != x.dtype:
        raise ValueError(f"scales must be {x.dtype} {groups}, got {scales.dtype} "
                         f"{tuple(scales.shape)}")
    if zeros.shape != groups or zeros.dtype != torch.uint8:
        raise ValueError(f"zeros must be uint8 {groups}, got {zeros.dtype} {tuple(zeros.shape)}")
    _check_x(x, n, k, bias)
    _check_same_device(x, qweight=qweight, scales=scales, zeros=zeros)


def _check_channel(x, qweight, scales, bias, weight_dtype: torch.dtype, out_dtype=None) -> None:
    if qweight.dim() != 2 or qweight.dtype != weight_dtype:
        raise ValueError(f"qweight must be {weight_dtype} [N, K], got {qweight.dtype} "
                         f"{tuple(qweight.shape)}")
    n, k = qweight.shape
    if scales.shape != (n,) or scales.dtype != torch.float32:
        raise ValueError(f"scales must be float32 [{n}], got {scales.dtype} "
                         f"{tuple(scales.shape)}")
    _check_x(x, n, k, bias, out_dtype)
    _check_same_device(x, qweight=qweight, scales=scales)
