"""HF checkpoints that are already quantized, read into the engine format's tensors without
quantizing again: AutoAWQ's GEMM format (`quant_method: awq`) and compressed-tensors
(`quant_method: compressed-tensors`, `pack-quantized` int4 and `float-quantized` FP8).

`quant_config_of(hf_config)` says which Kiln algorithm such a folder is (None: not quantized);
`read_linear(get, names, prefix, quant, shape)` returns one HF linear's {qweight, scales, zeros}
in Kiln's layout (layers/quantize.py), which fuse along the output dim like plain weights.

Both read files a user hands in: a config entry of the wrong type, or a stored tensor of another
dtype or shape than its format's, is an InvalidRequest naming it, never a Python error from
deep inside the unpacking (or, worse, a float tensor's bits read as codes). So is a value no
quantizer writes that would still load: a NaN or inf scale (every logit NaN) or a zero point
outside 4 bits (read as another nibble).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.format.engine_config import QuantConfig
from runtime_service.format.linear_names import LINEARS, kiln_name, names_of
from runtime_service.model.layers.quantize import pack_int4

# AutoAWQ packs 8 output columns per int32 in this order: nibble i holds column ORDER[i].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _unpack_int32_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """int32 [..., M] -> int64 [..., M, 8], nibble i (bits 4i..4i+3) at index i."""
    shifts = torch.arange(0, 32, 4, device=packed.device)
    return (packed.to(torch.int64)[..., None] >> shifts) & 0xF


def _awq_columns(packed: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's int32 [R, C // 8] -> uint8 [R, C] in column order."""
    nibbles = _unpack_int32_nibbles(packed)
    columns = torch.empty_like(nibbles)
    columns[..., list(AWQ_ORDER)] = nibbles
    return columns.flatten(-2).to(torch.uint8)


def _compressed_codes(packed: torch.Tensor, rows: int, cols: int, packed_dim: int
                      ) -> torch.Tensor:
    """compressed-tensors' pack-quantized int32 words -> uint8 codes 0..15 [rows, cols], unpacked
    by the format's own library (which gives them signed, -8..7; `packed_dim` 0: packed along
    the rows, as zero points are). AutoAWQ's words, whose library is not installed (it is
    GPU-only and no longer maintained), are unpacked here (`_awq_columns`)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    signed = unpack_from_int32(packed, 4, torch.Size((rows, cols)), packed_dim=packed_dim)
    return (signed.to(torch.int16) + 8).to(torch.uint8)


def quant_config_of(hf_config: dict) -> QuantConfig | None:
    """The Kiln quantization of an HF folder's config.json, or None when it has none.
    Schemes Kiln cannot serve as they are raise FailedPrecondition naming what it reads."""
    q = hf_config.get("quantization_config")
    if not q:
        return None
    q = _object(q, "quantization_config")
    method = q.get("quant_method")
    if method == "awq":
        if q.get("bits", 4) != 4 or str(q.get("version", "gemm")).lower() != "gemm" \
                or not q.get("zero_point", True):
            raise FailedPrecondition("AutoAWQ checkpoints are served in the 4-bit GEMM format "
                                     f"with zero points only, got {q}")
        return QuantConfig(algo="W4A16_AWQ", group_size=_whole_number(
            q.get("group_size", 128), "quantization_config.group_size"))
    if method == "compressed-tensors":
        group = _compressed_group(q)
        weights = _object(group["weights"], "the config group's weights")
        if weights.get("actorder") == "group":
            raise FailedPrecondition(ACT_ORDER_REFUSED)
        if q.get("kv_cache_scheme"):
            raise FailedPrecondition(
                "the checkpoint's KV cache scheme (static k/v scales calibrated into it) is not "
                "served: Kiln quantizes its KV cache per token at run time "
                "(kv_cache_quant_algo INT8 or FP8); quantize without kv_cache_scheme")
        if q.get("transform_config"):
            raise FailedPrecondition(
                "compressed-tensors transforms (rotations such as SpinQuant or QuIP, some "
                "applied at run time) are not served")
        activations = group.get("input_activations")
        if activations is not None:
            activations = _object(activations, "the config group's input_activations")
        if q.get("format") == "pack-quantized" and weights.get("num_bits") == 4 \
                and weights.get("type", "int") == "int" and weights.get("strategy") == "group" \
                and not activations:
            return QuantConfig(algo="W4A16", group_size=_whole_number(
                weights.get("group_size"), "the config group's weights.group_size"))
        if q.get("format") in ("float-quantized", "naive-quantized") \
                and weights.get("type") == "float" and weights.get("num_bits") == 8 \
                and weights.get("strategy") in ("channel", "tensor") \
                and _dynamic_fp8_per_token(activations):
            return QuantConfig(algo="FP8")
        raise FailedPrecondition(
            "compressed-tensors checkpoints are served as pack-quantized int4 weights (group "
            "strategy, activations unquantized) or float-quantized FP8 weights (channel or "
            "tensor strategy) with dynamic per-token FP8 activations (llmcompressor's "
            f"FP8_DYNAMIC); got format {q.get('format')!r} with weights {weights} and input "
            f"activations {activations}")
    raise FailedPrecondition(f"quantization_config quant_method {method!r} is not served; "
                             "Kiln reads awq (GEMM) and compressed-tensors")


# GPTQ's activation ordering with `actorder: group` puts input columns in groups out of order
# (`weight_g_idx` names each column's group). Kiln's int4 kernels read groups of consecutive
# columns, so such a checkpoint would need its activations permuted before every linear, and a
# tensor-parallel split of o and down could not keep a group on one rank. The other orderings
# (`static`, `weight`) quantize in activation order but store contiguous groups: served.
ACT_ORDER_REFUSED = (
    "compressed-tensors checkpoints with activation-ordered groups (actorder: group, a "
    "weight_g_idx per linear) are not served: Kiln's int4 kernels read each group as "
    "consecutive input columns. Quantize with actorder 'static' (llmcompressor's GPTQ default) "
    "or 'weight', which order the same way but store contiguous groups.")


def _check_contiguous_groups(g_idx: torch.Tensor, columns: int, groups: int,
                             prefix: str) -> None:
    """A stored g_idx is served only when it is the plain one, column k in group k // G."""
    plain = torch.arange(columns, device=g_idx.device) // (columns // groups)
    if g_idx.shape != plain.shape or not torch.equal(g_idx.to(plain.dtype), plain):
        raise FailedPrecondition(f"{prefix[:-1]}: {ACT_ORDER_REFUSED}")


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(f"config.json: {what} must be an object, got "
                             f"{type(value).__name__} {str(value)[:80]!r}")
    return value


def _whole_number(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"config.json: {what} must be a whole number, got {value!r}")
    return value


def _compressed_group(q: dict) -> dict:
    groups = list(_object(q.get("config_groups", {}), "quantization_config.config_groups")
                  .values())
    if len(groups) != 1 or not _object(groups[0], "a config group").get("weights"):
        raise FailedPrecondition("compressed-tensors checkpoints with exactly one config group "
                                 "of quantized weights are served")
    return groups[0]


def _dynamic_fp8_per_token(activations: dict | None) -> bool:
    """Kiln's FP8 linears quantize their input per token at run time; a checkpoint calibrated
    with static input scales (or none) would be served as another function than it states."""
    return bool(activations) and activations.get("type") == "float" \
        and activations.get("num_bits") == 8 and activations.get("dynamic") is True \
        and activations.get("strategy") == "token"


_QUANTIZED_SUFFIXES = ("qweight", "weight_packed", "weight_scale")


def check_zero_points(hf_config: dict, names: set[str]) -> None:
    """An asymmetric compressed-tensors int4 checkpoint (`symmetric: false`) stores a zero point
    beside every packed weight: one without would be read as symmetric (zero point 8), another
    function than the checkpoint states. Called once its config has passed quant_config_of."""
    q = hf_config.get("quantization_config") or {}
    if q.get("quant_method") != "compressed-tensors" or q.get("format") != "pack-quantized" \
            or _compressed_group(q)["weights"].get("symmetric", True) is not False:
        return
    missing = sorted(name.removesuffix("packed") + "zero_point" for name in names
                     if name.endswith(".weight_packed")
                     and name.removesuffix("packed") + "zero_point" not in names)
    if missing:
        raise InvalidRequest(f"{missing[0]} is missing ({len(missing)} linear(s) in all): the "
                             "checkpoint's scheme is asymmetric (symmetric: false), so every "
                             "int4 linear stores its zero points")


def _check_one_form(parts: list[str], names: set[str]) -> None:
    """A linear stored both as a float `.weight` and as packed int4 (`.qweight`, or
    `.weight_packed`) is refused: which of the two the checkpoint means is not for Kiln to
    guess. (FP8's `.weight` is itself the quantized tensor, beside its `.weight_scale`.)"""
    for part in parts:
        packed = [suffix for suffix in ("qweight", "weight_packed") if f"{part}.{suffix}" in names]
        if packed and f"{part}.weight" in names:
            raise InvalidRequest(f"{part} is stored both as a float weight and as {packed[0]}; "
                                 "a checkpoint holds each linear in one form")


def stored_unquantized(names: set[str], num_layers: int) -> tuple[str, ...]:
    """The Kiln names of the decoder linears a pre-quantized checkpoint stores as plain float
    weights (compressed-tensors' `ignore`, AutoAWQ's `modules_to_not_convert`), read off the
    tensors themselves rather than the lists, whose pattern dialects differ. Kiln runs q, k
    and v (and gate and up) as one linear: a fused linear stored half quantized is refused."""
    prefix = "" if "model.embed_tokens.weight" in names else "model."
    kept = []
    for layer in range(num_layers):
        for linear in LINEARS:
            parts = [name.removeprefix(prefix) for name in names_of(layer, linear)
                     if name.startswith("model.")]
            _check_one_form(parts, names)
            plain = [p + ".weight" in names and not any(
                f"{p}.{suffix}" in names for suffix in _QUANTIZED_SUFFIXES) for p in parts]
            if all(plain):
                kept.append(kiln_name(layer, linear))
            elif any(plain):
                raise FailedPrecondition(
                    f"{', '.join(p for p, flat in zip(parts, plain) if flat)} "
                    f"{'is' if sum(plain) == 1 else 'are'} stored unquantized but "
                    f"{', '.join(p for p, flat in zip(parts, plain) if not flat)} quantized; "
                    "Kiln runs them as one linear: quantize all of them or none")
    return tuple(kept)


def check_head_unquantized(names: set[str], head: torch.Tensor) -> None:
    """Kiln runs lm_head in the engine's float dtype. A checkpoint that quantized it (its
    scheme's targets without `ignore: [lm_head]`) stores codes there that would otherwise be
    read as weights."""
    stored = sorted(n for n in names if n.startswith("lm_head.")
                    and n not in ("lm_head.weight", "lm_head.bias"))
    if stored or head.dtype.itemsize == 1 or not head.dtype.is_floating_point:
        raise FailedPrecondition(
            "the checkpoint quantizes lm_head (" + (", ".join(stored) or str(head.dtype))
            + "); Kiln serves pre-quantized checkpoints with lm_head unquantized, as "
            "llmcompressor leaves it by default (ignore: [lm_head])")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _stored(get: Callable[[str], torch.Tensor], name: str, dtypes: tuple,
            *shapes: tuple) -> torch.Tensor:
    """`get(name)`, which the format stores as one of `dtypes` in one of `shapes`."""
    return check_stored(name, get(name), dtypes, *shapes)


def check_stored(name: str, tensor: torch.Tensor, dtypes: tuple, *shapes: tuple,
                 against: str = "its linear and the checkpoint's quantization_config"
                 ) -> torch.Tensor:
    """`tensor` if its dtype is one of `dtypes` and its shape one of `shapes`, else an
    InvalidRequest naming it, what it must be (`against` what) and what it is."""
    if tensor.dtype not in dtypes or tuple(tensor.shape) not in shapes:
        kinds = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        wanted = " or ".join(str(list(shape)) for shape in shapes)
        raise InvalidRequest(f"{name} must be {kinds} of shape {wanted} for {against}; it is "
                             f"{str(tensor.dtype).removeprefix('torch.')} "
                             f"{list(tensor.shape)}")
    return tensor


def _finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` unless it holds a NaN or inf: one such scale makes every logit NaN, and the
    engine then samples token 0 forever. A zero scale is a legal (all-zero) group's."""
    bad = torch.isnan(tensor) if tensor.dtype == torch.float8_e4m3fn else ~torch.isfinite(tensor)
    if bad.any():
        raise InvalidRequest(f"{name} holds NaN or inf at {bad.nonzero()[0].tolist()} "
                             f"({int(bad.sum())} of {bad.numel()}); every value must be finite")
    return tensor


def _groups(prefix: str, in_features: int, quant: QuantConfig) -> int:
    if in_features % quant.group_size or in_features % 8:
        raise InvalidRequest(f"{prefix[:-1]}: its {in_features} input columns are not whole "
                             f"groups of {quant.group_size} (nor of 8, the int32 packing)")
    return in_features // quant.group_size


def _int4_zero_points(name: str, zero: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' signed int8 zero points (-8..7) as Kiln's unsigned ones (0..15);
    one outside 4 bits would otherwise be read as another nibble (100 as 108)."""
    outside = (zero < -8) | (zero > 7)
    if outside.any():
        raise InvalidRequest(f"{name} holds {int(zero[outside][0])} (and {int(outside.sum())} "
                             "values in all) outside -8..7, the range of a 4-bit zero point")
    return (zero.to(torch.int64) + 8).to(torch.uint8)


def _check_symmetric(names: set[str], prefix: str) -> None:
    """A compressed-tensors int4 linear with no zero point is read as symmetric (zero point 8).
    Kiln serves one config group, so its linears are all symmetric or all asymmetric: if any
    other linear stores a zero point, this one's is missing, not implied."""
    if any(name.endswith(".weight_zero_point") for name in names):
        raise InvalidRequest(f"{prefix}weight_zero_point is missing: the checkpoint's other "
                             "int4 linears store zero points (an asymmetric scheme), and "
                             "compressed-tensors writes one for every linear of that scheme")


def _check_weight_shape(stored: torch.Tensor, prefix: str, shape: tuple[int, int]) -> None:
    """compressed-tensors records each packed weight's unpacked shape (`weight_shape`): one
    that differs from the linear's (out, in) features says the packing was made for another
    model, even where the packed tensor's own shape happens to fit."""
    if stored.dtype.is_floating_point or stored.numel() != 2 \
            or tuple(int(v) for v in stored.reshape(-1)) != tuple(shape):
        raise InvalidRequest(f"{prefix}weight_shape is {stored.reshape(-1).tolist()[:4]}; the "
                             f"model's config.json gives this linear {list(shape)}")


def read_linear(get: Callable[[str], torch.Tensor], names: set[str], prefix: str,
                quant: QuantConfig, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """One quantized HF linear (`prefix` = "...q_proj.") of `shape` (out, in features) in
    Kiln's tensors; each stored tensor is checked against its format's dtype and shape first."""
    n, k = shape
    if prefix + "qweight" in names:                                  # AutoAWQ GEMM
        groups = _groups(prefix, k, quant)
        packed = _stored(get, prefix + "qweight", (torch.int32,), (k, -(-n // 8)))
        if n % 8:
            raise InvalidRequest(f"{prefix[:-1]}: AutoAWQ packs 8 output columns per int32; "
                                 f"{n} is not a multiple of 8")
        codes = _awq_columns(packed).T.contiguous()                           # [N, K]
        zeros = _awq_columns(_stored(get, prefix + "qzeros", (torch.int32,),
                                     (groups, n // 8))).T.contiguous()        # [N, K // G]
        scales = _stored(get, prefix + "scales", FLOAT_DTYPES, (groups, n))
        scales = _finite(prefix + "scales", scales).T.contiguous()
        return {"qweight": pack_int4(codes), "scales": scales, "zeros": zeros}
    if prefix + "weight_packed" in names:                            # compressed-tensors int4
        groups = _groups(prefix, k, quant)
        codes = _compressed_codes(_stored(get, prefix + "weight_packed", (torch.int32,),
                                          (n, k // 8)), n, k, 1)              # q + 8, [N, K]
        scales = _stored(get, prefix + "weight_scale", FLOAT_DTYPES, (n, groups))
        _finite(prefix + "weight_scale", scales)
        if prefix + "weight_shape" in names:
            _check_weight_shape(get(prefix + "weight_shape"), prefix, shape)
        if prefix + "weight_g_idx" in names:
            _check_contiguous_groups(_stored(get, prefix + "weight_g_idx",
                                             (torch.int32, torch.int64), (k,)),
                                     k, groups, prefix)
        if prefix + "weight_zero_point" in names:
            zero = get(prefix + "weight_zero_point")
            packed = zero.dtype == torch.int32         # packed along rows, offset like codes
            check_stored(prefix + "weight_zero_point", zero, (torch.int32, torch.int8),
                     (-(-n // 8) if packed else n, groups))
            if packed:
                zeros = _compressed_codes(zero, n, groups, 0).contiguous()
            else:                                       # signed int8 zero points
                zeros = _int4_zero_points(prefix + "weight_zero_point", zero)
        else:
            _check_symmetric(names, prefix)
            zeros = torch.full(scales.shape, 8, dtype=torch.uint8)
        return {"qweight": pack_int4(codes), "scales": scales, "zeros": zeros}
    weight = get(prefix + "weight") if quant.algo == "FP8" and prefix + "weight" in names \
        else None
    if weight is not None and weight.dtype == torch.float8_e4m3fn:     # read once, checked here
        check_stored(prefix + "weight", weight, (torch.float8_e4m3fn,), (n, k))
        _finite(prefix + "weight", weight)                     # e4m3fn's NaN codes
        scales = _stored(get, prefix + "weight_scale", FLOAT_DTYPES, (n, 1), (n,), (1,), ())
        scales = _finite(prefix + "weight_scale", scales).float().reshape(-1)
        if scales.numel() == 1:            # tensor strategy: one scale, the same for every row
            scales = scales.expand(n).contiguous()
        return {"qweight": weight, "scales": scales}
    raise FailedPrecondition(f"{prefix[:-1]} is not stored in the checkpoint's quantized format")
