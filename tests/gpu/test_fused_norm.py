"""The fused residual-add + RMSNorm kernel against its plain-torch reference (CUDA only).

The sum must equal torch's rounded add exactly (it is the residual stream every later layer
reads); the normalised output may differ only where the float32 sum of squares, added in another
order, flips a rounding. Inputs are drawn anew on every run; the seed is printed on failure.
"""

from __future__ import annotations

import random

import pytest
import torch

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float16]
SEED = random.randrange(2 ** 31)


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
