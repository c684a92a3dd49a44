"""The fused residual-add + RMSNorm kernel against its plain-torch reference (CUDA only).

The sum must equal torch's rounded add exactly (it is the residual stream every later layer
reads); the normalised output may differ only where the float32 sum of squares, added in another
order, flips a rounding. Inputs are drawn anew on every run; the seed is printed on failure.
"""

from __future__ import annotations

import pytest
import torch

from support.seeds import module_seed

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float16]
SEED = module_seed()


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _inputs(shape, dtype, seed):
    """x like a layer's output, residual larger, so the add rounds away low bits of x."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator) * 3).to(dtype).cuda()
    residual = (torch.randn(shape, generator=generator) * 40).to(dtype).cuda()
    weight = torch.randn(shape[-1], generator=generator).to(dtype).cuda()
    return x, residual, weight


def _assert_matches(normed, summed, ref_normed, ref_summed):
    assert torch.equal(summed, ref_summed), f"seed {SEED}"
    assert _rel_err(normed, ref_normed) < 1e-2, f"seed {SEED}"
    # only sum-of-squares order flips
    assert (normed != ref_normed).float().mean().item() < 0.01, f"seed {SEED}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 100, 576, 4096, 5120])
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_add_rms_norm_matches_reference(rows, hidden, dtype):
    from runtime_service.model.kernels.rms_norm import add_rms_norm, add_rms_norm_reference

    x, residual, weight = _inputs((rows, hidden), dtype, SEED + rows * 7919 + hidden)
    normed, summed = add_rms_norm(x, residual, weight, 1e-5)
    _assert_matches(normed, summed, *add_rms_norm_reference(x, residual, weight, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_reads_strided_rows_of_any_rank(dtype):
    from runtime_service.model.kernels.rms_norm import add_rms_norm, add_rms_norm_reference

    wide, residual, weight = _inputs((3, 5, 2 * 4096), dtype, SEED)
    x = wide[..., :4096]                                    # rows 2 * 4096 apart
    residual = residual[..., 4096:].contiguous()
    normed, summed = add_rms_norm(x, residual, weight[:4096], 1e-6)
    assert normed.shape == summed.shape == x.shape
    _assert_matches(normed, summed, *add_rms_norm_reference(x, residual, weight[:4096], 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_layer_fuses_the_add_on_cuda(dtype):
    from runtime_service.model import kernels
    from runtime_service.model.layers.norm import RMSNorm

    x, residual, weight = _inputs((9, 4096), dtype, SEED)
    norm = RMSNorm(4096, 1e-5).to(device="cuda", dtype=dtype)
    norm.weight.data.copy_(weight)
    normed, summed = norm.forward_with_residual(x, residual)
    with kernels.disabled():
        ref_normed, ref_summed = norm.forward_with_residual(x, residual)
    _assert_matches(normed, summed, ref_normed, ref_summed)


def test_add_rms_norm_rejects_bad_inputs():
    from runtime_service.model.kernels.rms_norm import add_rms_norm

    x, residual, weight = _inputs((4, 256), torch.bfloat16, SEED)
    bad = [
        (x, residual[:2], weight),                                   # shapes differ
        (x, residual.half(), weight),                                # dtypes differ
        (x, residual, weight[:128]),                                 # weight too short
        (x, residual, weight.float()),                               # weight dtype
        (x, residual.repeat(1, 2)[:, ::2], weight),                  # residual strided
        (x.repeat(1, 2)[:, ::2], residual, weight),                  # x strided
    ]
    for args in bad:
        with pytest.raises(ValueError):
            add_rms_norm(*args, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 100, 4096])
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_norms_to_fp8_give_the_quantizing_launchs_codes(rows, hidden, dtype):
    """`to_fp8`: the norm's own output row quantized as quantize_rows_fp8 quantizes it, codes
    and scales bit for bit, and the residual sum unchanged (rms_norm and add_rms_norm)."""
    from runtime_service.model.kernels.quant_convert import quantize_rows_fp8
    from runtime_service.model.kernels.rms_norm import add_rms_norm, rms_norm

    x, residual, weight = _inputs((rows, hidden), dtype, SEED + rows * 31 + hidden)
    x[:, 0] *= 50                                       # an outlier sets each row's scale
    normed, summed = add_rms_norm(x, residual, weight, 1e-5)
    codes, scales, summed_fp8 = add_rms_norm(x, residual, weight, 1e-5, to_fp8=True)
    ref_codes, ref_scales = quantize_rows_fp8(normed)
    assert torch.equal(summed_fp8, summed), f"seed {SEED}"
    assert torch.equal(scales, ref_scales), f"seed {SEED}"
    assert torch.equal(codes.view(torch.uint8), ref_codes.view(torch.uint8)), f"seed {SEED}"
    codes, scales = rms_norm(x, weight, 1e-5, to_fp8=True)
    ref_codes, ref_scales = quantize_rows_fp8(rms_norm(x, weight, 1e-5))
    assert torch.equal(scales, ref_scales), f"seed {SEED}"
    assert torch.equal(codes.view(torch.uint8), ref_codes.view(torch.uint8)), f"seed {SEED}"


@pytest.mark.parametrize("rows", [1, 5, 100])
def test_norm_hands_an_fp8_linear_its_rows_quantized_and_the_linear_is_unchanged(rows,
                                                                               monkeypatch):
    """The decoder block's path: a norm before an FP8 column-parallel linear gives it e4m3 rows
    where the linear would quantize them itself (2 rows or more), and the linear's output is
    the same bits as the norm's bf16 rows through the linear; one row keeps the plain path."""
    from runtime_service.model.layers.linear import ColumnParallelLinear
    from runtime_service.model.layers.norm import RMSNorm
    from runtime_service.model.layers.quantized_linear import (Fp8Rows, WeightQuant,
                                                               pack_for_device, quantize_weight)

    from runtime_service.model.kernels import quant_tuning

    # both paths on their first candidate (the same tile), not each on its own timing
    monkeypatch.setattr(quant_tuning, "tuned_config",
                        lambda key, x, weights, candidates, call: candidates[0])
    hidden, out = 512, 384
    x, residual, weight = _inputs((rows, hidden), torch.bfloat16, SEED + rows)
    norm = RMSNorm(hidden, 1e-5).to(device="cuda", dtype=torch.bfloat16)
    norm.weight.data.copy_(weight)
    quant = WeightQuant("fp8")
    linear = ColumnParallelLinear(hidden, (out,), bias=False, quant=quant).cuda()
    generator = torch.Generator().manual_seed(SEED)
    for name, tensor in quantize_weight(torch.randn(out, hidden, generator=generator), quant,
                                        torch.bfloat16).items():
        getattr(linear, name).data = tensor.cuda()
    pack_for_device(linear, quant)
    for res in (None, residual):
        normed, summed = norm.forward_for(linear, x, res)
        assert isinstance(normed, Fp8Rows) == (rows > 1), f"rows {rows}"
        plain, plain_sum = (norm(x), x) if res is None else norm.forward_with_residual(x, res)
        assert torch.equal(summed, plain_sum), f"seed {SEED}"
        assert torch.equal(linear(normed), linear(plain)), f"rows {rows} seed {SEED}"
