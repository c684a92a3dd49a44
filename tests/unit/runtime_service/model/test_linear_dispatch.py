"""Which path the parallel linear layers take: nn.functional.linear on CPU, bit for bit, and the
Triton GEMV only for decode-sized CUDA inputs while the switch is on (checked here with a stand-in
GEMV, so no GPU or triton is needed). The same for SwiGLU's down projection of gate_up: silu then
linear on CPU, the gated GEMV at decode."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from runtime_service.model import kernels
from runtime_service.model.layers import linear as linear_mod
from runtime_service.model.layers.linear import (GEMV_MAX_ROWS, ColumnParallelLinear, RowParallelLinear,
                                           gemv_enabled, gemv_rows_up_to, set_small_batch_gemv,
                                           uses_gemv)

REPO = Path(__file__).resolve().parents[4]


def _column(in_features: int, out_features: int, bias: bool, dtype: torch.dtype):
    layer = ColumnParallelLinear(in_features, (out_features,), bias).to(dtype)
    generator = torch.Generator().manual_seed(in_features * 31 + out_features)
    layer.weight.data = torch.randn(layer.weight.shape, generator=generator).to(dtype)
    if bias:
        layer.bias.data = torch.randn(layer.bias.shape, generator=generator).to(dtype)
    return layer


def _row(in_features: int, out_features: int, bias: bool, dtype: torch.dtype):
    layer = RowParallelLinear(in_features, out_features, bias).to(dtype)
    generator = torch.Generator().manual_seed(in_features * 17 + out_features)
    layer.weight.data = torch.randn(layer.weight.shape, generator=generator).to(dtype)
    if bias:
        layer.bias.data = torch.randn(layer.bias.shape, generator=generator).to(dtype)
    return layer


def _silu_mul(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up


@pytest.fixture
def fake_activation(monkeypatch):
    """Records the calls a stand-in for the silu_and_mul kernel receives."""
    calls = []

    def silu_and_mul(x):
        calls.append(x)
        return _silu_mul(x)

    monkeypatch.setitem(sys.modules, "runtime_service.model.kernels.activation",
                        types.SimpleNamespace(silu_and_mul=silu_and_mul))
    return calls


@pytest.fixture
def fake_gemv(monkeypatch):
    """Makes every tensor look kernel-ready and records the calls a stand-in GEMV receives."""
    calls = []

    def gemv(x, weight, bias=None, gated=False):
        calls.append((x, weight, bias, gated))
        return nn.functional.linear(_silu_mul(x) if gated else x, weight, bias) + 1000

    monkeypatch.setattr(kernels, "available", lambda tensor=None: True)
    monkeypatch.setitem(sys.modules, "runtime_service.model.kernels.gemv",
                        types.SimpleNamespace(gemv=gemv))
    return calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, GEMV_MAX_ROWS, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_layers_equal_functional_linear_bit_for_bit(dtype, rows, bias):
    x = torch.randn(rows, 48, generator=torch.Generator().manual_seed(rows)).to(dtype)
    column = _column(48, 24, bias, dtype)
    assert torch.equal(column(x), nn.functional.linear(x, column.weight, column.bias))
    row = _row(48, 24, bias, dtype)
    expected = nn.functional.linear(x, row.weight)
    if bias:
        expected = expected + row.bias
    assert torch.equal(row(x), expected)


def test_decode_graphs_raise_the_row_limit_only_inside_their_block(fake_gemv):
    """Eager linears of 9-64 rows stay on cuBLAS (a first-use tuning would stall a prefill);
    inside `gemv_rows_up_to` (the decode graphs' warm-up and capture) they take the GEMV, never
    past its 64-row tile, and the limit comes back afterwards, also after an error."""
    weight = torch.randn(8, 16, dtype=torch.bfloat16)
    rows = lambda n: torch.randn(n, 16, dtype=torch.bfloat16)  # noqa: E731
    assert not uses_gemv(rows(48), weight)
    with gemv_rows_up_to(48):
        assert uses_gemv(rows(48), weight) and uses_gemv(rows(1), weight)
        assert not uses_gemv(rows(49), weight)
    with gemv_rows_up_to(256):
        assert uses_gemv(rows(64), weight)
        assert not uses_gemv(rows(65), weight)
    with gemv_rows_up_to(2):                      # never below the eager limit
        assert uses_gemv(rows(GEMV_MAX_ROWS), weight)
    with pytest.raises(RuntimeError), gemv_rows_up_to(64):
        raise RuntimeError("capture failed")
    assert not uses_gemv(rows(GEMV_MAX_ROWS + 1), weight)


def test_cpu_input_never_takes_the_gemv():
    x = torch.randn(1, 16, dtype=torch.bfloat16)
    assert not uses_gemv(x, torch.randn(8, 16, dtype=torch.bfloat16))


def test_decode_sized_inputs_take_the_gemv_and_others_do_not(fake_gemv):
    weight = torch.randn(8, 16, dtype=torch.bfloat16)
    for rows in range(1, GEMV_MAX_ROWS + 1):
        assert uses_gemv(torch.randn(rows, 16, dtype=torch.bfloat16), weight)
    assert not uses_gemv(torch.randn(GEMV_MAX_ROWS + 1, 16, dtype=torch.bfloat16), weight)
    assert not uses_gemv(torch.randn(0, 16, dtype=torch.bfloat16), weight)
    assert not uses_gemv(torch.randn(1, 16), weight.float())                      # float32
    assert not uses_gemv(torch.randn(1, 16, dtype=torch.float16), weight)         # mixed dtypes
    assert not uses_gemv(torch.randn(1, 2, 16, dtype=torch.bfloat16), weight)     # not 2-D
    assert not uses_gemv(torch.randn(16, 2, dtype=torch.bfloat16).T, weight)      # strided K
    assert not uses_gemv(torch.randn(1, 16, dtype=torch.bfloat16), weight,
                         torch.randn(8))                                          # float32 bias
    assert not uses_gemv(torch.randn(1, 16, dtype=torch.bfloat16),
                         torch.randn(16, 8, dtype=torch.bfloat16).T)              # strided weight


def test_column_layer_passes_its_bias_to_the_gemv(fake_gemv):
    layer = _column(16, 8, True, torch.bfloat16)
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    out = layer(x)
    assert len(fake_gemv) == 1
    passed_x, passed_weight, passed_bias, _ = fake_gemv[0]
    assert passed_x is x and passed_weight is layer.weight and passed_bias is layer.bias
    assert torch.equal(out, nn.functional.linear(x, layer.weight, layer.bias) + 1000)


def test_row_layer_adds_its_bias_after_the_all_reduce(fake_gemv, monkeypatch):
    layer = _row(16, 8, True, torch.bfloat16)
    reduced = []
    monkeypatch.setattr(layer.parallel, "all_reduce", lambda y: reduced.append(y.clone()) or y)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    out = layer(x)
    assert fake_gemv[0][2] is None                       # the GEMV itself gets no bias
    partial = nn.functional.linear(x, layer.weight) + 1000
    assert torch.equal(reduced[0], partial)
    assert torch.equal(out, partial + layer.bias)


def test_switch_off_sends_everything_to_functional_linear_and_restores(fake_gemv):
    layer = _column(16, 8, False, torch.bfloat16)
    x = torch.randn(1, 16, dtype=torch.bfloat16)
    with gemv_enabled(False):
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight))
        with gemv_enabled(True):
            layer(x)
        assert len(fake_gemv) == 1
        layer(x)
    assert len(fake_gemv) == 1
    layer(x)
    assert len(fake_gemv) == 2


def test_setter_switches_and_returns_the_previous_setting(fake_gemv):
    layer = _column(16, 8, False, torch.bfloat16)
    x = torch.randn(1, 16, dtype=torch.bfloat16)
    assert set_small_batch_gemv(False) is True
    try:
        layer(x)
        assert not fake_gemv
    finally:
        assert set_small_batch_gemv(True) is False
    layer(x)
    assert len(fake_gemv) == 1


def test_switch_is_restored_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with gemv_enabled(False):
            raise RuntimeError("boom")
    assert linear_mod._gemv_enabled


CPU_FORWARDS = {   # a decode-sized bf16 call on the CPU, in a fresh interpreter
    "column forward": "layer = ColumnParallelLinear(8, (4,), True).to(torch.bfloat16); "
                      "layer(torch.randn(1, 8, dtype=torch.bfloat16))",
    "down projection of gate_up": "layer = RowParallelLinear(8, 4, True).to(torch.bfloat16); "
                                  "layer.forward_gate_up(torch.randn(1, 16, dtype=torch.bfloat16))",
}


@pytest.mark.parametrize("call", sorted(CPU_FORWARDS))
def test_cpu_forward_never_imports_triton(call):
    code = ("import sys, torch; from runtime_service.model.layers.linear import ColumnParallelLinear, "
            f"RowParallelLinear; {CPU_FORWARDS[call]}; "
            "sys.exit(1 if 'triton' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, GEMV_MAX_ROWS, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_down_projection_of_gate_up_equals_silu_then_linear_bit_for_bit(dtype, rows, bias):
    gate_up = torch.randn(rows, 96, generator=torch.Generator().manual_seed(rows)).to(dtype) * 4
    row = _row(48, 24, bias, dtype)
    expected = nn.functional.linear(_silu_mul(gate_up), row.weight)
    if bias:
        expected = expected + row.bias
    assert torch.equal(row.forward_gate_up(gate_up), expected)


def test_decode_sized_gate_up_takes_the_gated_gemv_and_bias_follows_the_all_reduce(
        fake_gemv, fake_activation, monkeypatch):
    layer = _row(16, 8, True, torch.bfloat16)
    reduced = []
    monkeypatch.setattr(layer.parallel, "all_reduce", lambda y: reduced.append(y.clone()) or y)
    gate_up = torch.randn(GEMV_MAX_ROWS, 32, dtype=torch.bfloat16)
    out = layer.forward_gate_up(gate_up)
    assert len(fake_gemv) == 1 and not fake_activation
    passed_x, passed_weight, passed_bias, gated = fake_gemv[0]
    assert passed_x is gate_up and passed_weight is layer.weight and passed_bias is None and gated
    partial = nn.functional.linear(_silu_mul(gate_up), layer.weight) + 1000
    assert torch.equal(reduced[0], partial)
    assert torch.equal(out, partial + layer.bias)


def test_prefill_gate_up_takes_the_activation_kernel_then_linear(fake_gemv, fake_activation):
    layer = _row(16, 8, False, torch.bfloat16)
    gate_up = torch.randn(GEMV_MAX_ROWS + 1, 32, dtype=torch.bfloat16)
    out = layer.forward_gate_up(gate_up)
    assert not fake_gemv and len(fake_activation) == 1 and fake_activation[0] is gate_up
    assert torch.equal(out, nn.functional.linear(_silu_mul(gate_up), layer.weight))


def test_switch_off_sends_gate_up_to_the_activation_kernel_then_linear(fake_gemv,
                                                                        fake_activation):
    layer = _row(16, 8, False, torch.bfloat16)
    gate_up = torch.randn(1, 32, dtype=torch.bfloat16)
    with gemv_enabled(False):
        out = layer.forward_gate_up(gate_up)
    assert not fake_gemv and len(fake_activation) == 1
    assert torch.equal(out, nn.functional.linear(_silu_mul(gate_up), layer.weight))


@pytest.mark.parametrize("rows", [1, 5])
def test_cpu_norm_before_an_fp8_linear_hands_it_plain_rows(rows):
    """A norm hands a linear e4m3 rows only where the CUDA kernels would quantize them (never on
    the CPU): there `forward_for` is the norm (with its residual add) and nothing else."""
    from runtime_service.model.layers.norm import RMSNorm
    from runtime_service.model.layers.quantized_linear import WeightQuant, quantize_weight

    quant = WeightQuant("fp8")
    layer = ColumnParallelLinear(32, (16,), bias=False, quant=quant)
    generator = torch.Generator().manual_seed(rows)
    for name, tensor in quantize_weight(torch.randn(16, 32, generator=generator), quant,
                                        torch.bfloat16).items():
        getattr(layer, name).data = tensor
    norm = RMSNorm(32, 1e-5).to(torch.bfloat16)
    x = torch.randn(rows, 32, generator=generator).to(torch.bfloat16)
    residual = torch.randn(rows, 32, generator=generator).to(torch.bfloat16)
    assert not layer.takes_fp8_rows(x)
    normed, summed = norm.forward_for(layer, x, residual)
    assert torch.equal(summed, x + residual) and torch.equal(normed, norm(x + residual))
    normed, summed = norm.forward_for(layer, x, None)
    assert summed is x and torch.equal(normed, norm(x))
    assert not ColumnParallelLinear(32, (16,), bias=False).takes_fp8_rows(x)
