"""The norms' fp8-storing variants must be laid out as their plain ones (kernels/rms_norm.py):
Triton picks a kernel's layout from its widest memory access, and the layout sets the order in
which each thread adds its share of the sum of squares. When the fp8 variant stored 16 codes a
thread and the plain one 8 values, a row's rstd now and then differed in its last bit, and with
it a code (bench/NOTES.md, run 27a). Compiled for sm_90 offline from Triton's own wheel: no GPU
needed."""

from __future__ import annotations

import pytest

from support.triton_interpreter import needs_triton

_ALIGNED = ["X", "R", "W", "Out", "Sum", "stride_x", "stride_r", "stride_o", "stride_s"]


def _layouts(kernel, signature: dict, constexprs: dict, num_warps: int) -> list[str]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(signature)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in _ALIGNED
             if name in names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                                        attrs=attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    return sorted({line.split("=", 1)[1].strip() for line in compiled.asm["ttgir"].splitlines()
                   if line.startswith("#blocked")})


@needs_triton
@pytest.mark.parametrize("hidden", [4096, 576, 100])
def test_fp8_norms_are_laid_out_as_the_plain_norms(hidden):
    from runtime_service.model.kernels import rms_norm

    options = rms_norm._launch_options(hidden)
    warps = options.pop("num_warps")
    common = {"stride_x": "i32", "stride_o": "i32", "eps": "fp32", "HIDDEN": "constexpr",
              "BLOCK": "constexpr", "VEC": "constexpr", "TO_FP8": "constexpr"}
    found = {}
    for to_fp8 in (False, True):
        out = {"Out": "*fp8e4nv" if to_fp8 else "*bf16",
               "XScale": "*fp32" if to_fp8 else "constexpr"}
        constexprs = {**options, "TO_FP8": to_fp8, **({} if to_fp8 else {"XScale": None})}
        plain = {"X": "*bf16", "W": "*bf16", **out, **common}
        added = {"X": "*bf16", "R": "*bf16", "W": "*bf16", **out, "Sum": "*bf16",
                 "stride_r": "i32", "stride_s": "i32", **common}
        found[("rms_norm", to_fp8)] = _layouts(rms_norm._rms_norm_kernel, plain, constexprs,
                                               warps)
        found[("add_rms_norm", to_fp8)] = _layouts(rms_norm._add_rms_norm_kernel, added,
                                                   constexprs, warps)
    assert found[("rms_norm", True)] == found[("rms_norm", False)], found
    assert found[("add_rms_norm", True)] == found[("add_rms_norm", False)], found
