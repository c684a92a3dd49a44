"""Weight quantization arithmetic and the quantized linear layers' CPU path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from runtime_service.model.layers.linear import ColumnParallelLinear, RowParallelLinear
from runtime_service.model.layers.quantize import (dequantize_int4, dequantize_per_channel,
                                                   fake_quantize_fp8_rows, fake_quantize_int4,
                                                   pack_int4, quantize_fp8, quantize_int4,
                                                   quantize_int8, unpack_int4)
from runtime_service.model.layers.quantized_linear import (WeightQuant, dequantized_weight,
                                                           quantize_weight)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 16), st.integers(0, 2 ** 31))
def test_int4_packing_round_trips_and_puts_even_columns_in_the_low_nibble(rows, half, seed):
    codes = torch.randint(0, 16, (rows, 2 * half), generator=torch.Generator().manual_seed(seed))
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, half)
    assert torch.equal(packed & 0x0F, codes[:, 0::2].to(torch.uint8))
    assert torch.equal(packed >> 4, codes[:, 1::2].to(torch.uint8))
    assert torch.equal(unpack_int4(packed), codes.to(torch.uint8))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_error_is_at_most_half_a_step_per_group(group_size):
    generator = torch.Generator().manual_seed(group_size)
    w = torch.randn(48, 256, generator=generator) * torch.rand(48, 1, generator=generator) * 3
    q = quantize_int4(w, group_size, torch.float32)
    assert q["qweight"].shape == (48, 128) and q["zeros"].dtype == torch.uint8
    assert q["scales"].shape == (48, 256 // group_size) and int(q["zeros"].max()) <= 15
    back = dequantize_int4(q["qweight"], q["scales"], q["zeros"], group_size)
    step = q["scales"].repeat_interleave(group_size, dim=1)
    assert ((back - w).abs() <= step / 2 + 1e-5).all()
    assert torch.allclose(back, fake_quantize_int4(w, group_size), atol=1e-5)


def test_int4_keeps_an_exact_zero_and_a_constant_group():
    w = torch.zeros(2, 64)
    w[0, :32] = 0.5
    q = quantize_int4(w, 32, torch.float32)
    back = dequantize_int4(q["qweight"], q["scales"], q["zeros"], 32)
    assert torch.allclose(back, w, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_int4_codes_are_rounded_against_the_stored_bfloat16_scale(seed):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(seed))
    q = quantize_int4(w, 32, torch.bfloat16)
    assert q["scales"].dtype == torch.bfloat16
    back = dequantize_int4(q["qweight"], q["scales"].float(), q["zeros"], 32)
    step = q["scales"].float().repeat_interleave(32, dim=1)
    assert ((back - w).abs() <= step / 2 + 1e-5).all()


def test_int8_and_fp8_are_per_output_channel():
    w = torch.randn(32, 64) * torch.linspace(0.01, 10, 32)[:, None]
    q8 = quantize_int8(w)
    assert q8["qweight"].dtype == torch.int8 and q8["scales"].dtype == torch.float32
    assert q8["qweight"].abs().amax(dim=1).eq(127).all()
    back = dequantize_per_channel(q8["qweight"], q8["scales"], torch.float32)
    assert ((back - w).abs() <= q8["scales"][:, None] / 2 + 1e-6).all()
    f8 = quantize_fp8(w)
    assert f8["qweight"].dtype == torch.float8_e4m3fn
    back = dequantize_per_channel(f8["qweight"], f8["scales"], torch.float32)
    assert ((back - w).abs() <= w.abs() * 2 ** -4 + f8["scales"][:, None] * 2 ** -9).all()


def test_fp8_activations_are_rounded_per_row():
    x = torch.tensor([[1.0, 0.3, -448.0], [1e-3, 2e-3, 3e-3]])
    y = fake_quantize_fp8_rows(x)
    assert y[0, 2] == -448.0 and y[1, 2] == pytest.approx(3e-3, rel=1e-6)
    assert ((y - x).abs() <= x.abs() * 2 ** -4).all()


@pytest.mark.parametrize("kind", ["int4", "int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_layers_compute_x_times_their_dequantized_weight(kind, dtype):
    torch.manual_seed(0)
    quant = WeightQuant(kind, 32)
    column = ColumnParallelLinear(64, (48, 16), bias=True, quant=quant)
    row = RowParallelLinear(64, 32, bias=True, quant=quant)
    for layer, (n, k) in ((column, (64, 64)), (row, (32, 64))):
        for name, tensor in quantize_weight(torch.randn(n, k), quant, dtype).items():
            getattr(layer, name).data = tensor
        layer.bias.data = torch.randn(n).to(dtype)
        x = torch.randn(5, k).to(dtype)
        activations = fake_quantize_fp8_rows(x) if kind == "fp8" else x
        expected = activations @ dequantized_weight(layer, quant, dtype).T + layer.bias
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        assert torch.allclose(layer(x), expected, rtol=tol, atol=tol), (kind, type(layer))
    gate_up = torch.randn(3, 128).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.equal(row.forward_gate_up(gate_up), row(torch.nn.functional.silu(gate) * up))


def test_weight_quant_refuses_unknown_kinds_and_group_sizes():
    with pytest.raises(ValueError, match="int4, int8 or fp8"):
        WeightQuant("int2")
    with pytest.raises(ValueError, match="group_size"):
        WeightQuant("int4", 48)
    assert WeightQuant.for_algo("NONE", 128) is None
    assert WeightQuant.for_algo("W4A16_AWQ", 64) == WeightQuant("int4", 64)


def test_a_layer_packed_for_the_kernels_still_dequantizes_and_runs_its_portable_path():
    """The loader repacks int4 layers for the CUDA kernels; the portable path (kernels switched
    off, a float32 input) must still read them as the contract says."""
    from runtime_service.model.kernels.quant_linear import pack_for_device

    torch.manual_seed(3)
    quant = WeightQuant("int4", 64)
    layer = ColumnParallelLinear(256, (96, 32), bias=False, quant=quant)
    for name, tensor in quantize_weight(torch.randn(128, 256), quant, torch.float32).items():
        getattr(layer, name).data = tensor
    x = torch.randn(3, 256)
    weight, want = dequantized_weight(layer, quant, torch.float32), layer(x)
    packed = pack_for_device("int4", {"qweight": layer.qweight.data, "scales": layer.scales.data})
    assert not torch.equal(packed["qweight"], layer.qweight.data)
    layer.qweight.data = packed["qweight"]
    layer.packed_for_kernels = True
    assert torch.equal(dequantized_weight(layer, quant, torch.float32), weight)
    assert torch.equal(layer(x), want)
