"""The quantized kernels' plain-torch references and input checks follow the quantized-tensor
contract (CPU: these are what the GPU tests compare the kernels against)."""

from __future__ import annotations

import pytest
import torch

from runtime_service.model.kernels import kv_quant
from runtime_service.model.kernels import quant_linear as ql


def test_int4_dequantize_reads_low_nibble_as_the_even_column():
    # Row 0: bytes 0x21, 0x43 -> columns 1, 2, 3, 4; group 2 scales 0.5 / 2.0, zeros 1 / 3.
    qweight = torch.tensor([[0x21, 0x43]], dtype=torch.uint8)
    scales = torch.tensor([[0.5, 2.0]])
    zeros = torch.tensor([[1, 3]], dtype=torch.uint8)
    weight = ql.int4_dequantize(qweight, scales, zeros, group_size=2)
    assert weight.tolist() == [[0.0, 0.5, 0.0, 2.0]]


def _contract_int4(n: int, k: int, group: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Codes [N, K] and their contract tensors (low nibble = even column)."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=generator)
    qweight = codes[:, 0::2] | (codes[:, 1::2] << 4)
    scales = torch.rand(n, k // group, generator=generator).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (n, k // group), dtype=torch.uint8, generator=generator)
    return codes, {"qweight": qweight, "scales": scales, "zeros": zeros}


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_pack_for_device_puts_columns_j_and_half_plus_j_in_byte_j_of_a_group(group):
    codes, tensors = _contract_int4(6, 4 * group, group, seed=group)
    packed = ql.pack_for_device("int4", tensors)
    half = group // 2
    for g in range(4):
        for j in (0, 1, half - 1):
            byte = packed["qweight"][:, g * half + j]
            assert torch.equal(byte & 0xF, codes[:, g * group + j])
            assert torch.equal(byte >> 4, codes[:, g * group + half + j])
    assert torch.equal(packed["scales"], tensors["scales"])
    assert torch.equal(packed["zeros"], tensors["zeros"])
    assert torch.equal(ql.contract_layout("int4", packed)["qweight"], tensors["qweight"])


def test_pack_for_device_keeps_int8_and_fp8_and_refuses_what_gives_no_group():
    q8 = torch.randint(-128, 128, (32, 64), dtype=torch.int8).t()
    packed = ql.pack_for_device("int8", {"qweight": q8, "scales": torch.ones(64)})
    assert packed["qweight"].is_contiguous() and torch.equal(packed["qweight"], q8)
    _, tensors = _contract_int4(4, 96, 32, seed=1)
    for scales in (torch.ones(4, 0), torch.ones(4, 5), torch.ones(4)):
        with pytest.raises(ValueError, match="no int4 group size"):
            ql.pack_for_device("int4", {**tensors, "scales": scales})


def test_cpu_calls_run_the_references():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 128, generator=generator).to(torch.bfloat16)
    qweight = torch.randint(0, 256, (16, 64), dtype=torch.uint8, generator=generator)
    scales = torch.rand(16, 4, generator=generator).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (16, 4), dtype=torch.uint8, generator=generator)
    assert torch.equal(ql.int4_linear(x, qweight, scales, zeros, 32),
                       ql.int4_linear_reference(x, qweight, scales, zeros, 32))
    q8 = torch.randint(-128, 128, (16, 128), dtype=torch.int8, generator=generator)
    s8 = torch.rand(16, generator=generator)
    expected = (x.float() @ (q8.float() * s8[:, None]).T).to(torch.bfloat16)
    assert torch.equal(ql.int8_linear(x, q8, s8), expected)
    fp8 = torch.randn(16, 128, generator=generator).to(torch.float8_e4m3fn)
    assert torch.equal(ql.fp8_linear(x, fp8, s8), ql.fp8_linear_reference(x, fp8, s8))
    gate_up = torch.randn(1, 256, generator=generator).to(torch.bfloat16)    # [gate | up]
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.equal(ql.fp8_linear(gate_up, fp8, s8, gated=True),
                       ql.fp8_linear_reference(torch.nn.functional.silu(gate) * up, fp8, s8))


def test_fp8_row_quantization_uses_amax_over_448_with_a_floor():
    x = torch.tensor([[1.0, -896.0, 3.0], [0.0, 0.0, 0.0]])
    xq, scales = ql.quantize_rows_fp8_reference(x)
    assert scales[0].item() == 2.0 and scales[1].item() == pytest.approx(1e-12)
    assert xq.float()[0].tolist() == [0.5, -448.0, 1.5] and not xq.float().isnan().any()


def test_kv_int8_quantization_rounds_half_to_even_and_clamps():
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5]])            # scale 1: q = x rounded half-even
    q, scales = kv_quant.quantize_kv_reference(x, torch.int8)
    assert scales.tolist() == [1.0] and q.tolist() == [[127, 0, 2, -2]]
    zeros, floor = kv_quant.quantize_kv_reference(torch.zeros(1, 4), torch.int8)
    assert floor.item() == pytest.approx(1e-8) and zeros.abs().sum() == 0


def test_kv_fp8_quantization_maps_amax_to_448():
    q, scales = kv_quant.quantize_kv_reference(torch.tensor([[2.0, -1.0, 0.25]]),
                                               torch.float8_e4m3fn)
    assert scales.item() == pytest.approx(2.0 / 448)
    assert q.float()[0, 0].item() == 448.0
    restored = kv_quant.dequantize_kv_reference(q, scales)
    assert torch.allclose(restored, torch.tensor([[2.0, -1.0, 0.25]]), rtol=0.07)


def test_bad_kv_scales_are_refused():
    cache = torch.zeros(2, 16, 2, 8, dtype=torch.int8)
    scale = torch.zeros(2, 16, 2)
    assert kv_quant.check_kv_scales(cache, cache, scale, scale)
    assert not kv_quant.check_kv_scales(cache.float(), cache.float(), None, None)
    with pytest.raises(ValueError, match="needs k_scale"):
        kv_quant.check_kv_scales(cache, cache, None, None)
    with pytest.raises(ValueError, match="both"):
        kv_quant.check_kv_scales(cache, cache, scale, None)
    with pytest.raises(ValueError, match="float32"):
        kv_quant.check_kv_scales(cache, cache, scale.double(), scale)


def test_bad_linear_inputs_are_refused_before_any_work():
    x = torch.zeros(2, 64, dtype=torch.bfloat16)
    qweight = torch.zeros(8, 32, dtype=torch.uint8)
    scales = torch.zeros(8, 2, dtype=torch.bfloat16)
    zeros = torch.zeros(8, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="group_size must be one of"):
        ql.int4_linear(x, qweight, scales, zeros, 16)
    with pytest.raises(ValueError, match="zeros must be uint8"):
        ql.int4_linear(x, qweight, scales, zeros.to(torch.int8), 32)
    with pytest.raises(ValueError, match="must be one of"):
        ql.int8_linear(x.double(), torch.zeros(8, 64, dtype=torch.int8), torch.zeros(8))
    with pytest.raises(ValueError, match="bias must be"):
        ql.fp8_linear(x, torch.zeros(8, 64).to(torch.float8_e4m3fn), torch.zeros(8),
                      bias=torch.zeros(7, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="kind must be"):
        ql.pack_for_device("nf4", {})
    with pytest.raises(ValueError, match=r"gated x must be \[M, 2K\]"):
        ql.fp8_linear(x, torch.zeros(8, 64).to(torch.float8_e4m3fn), torch.zeros(8),
                      gated=True)


def test_a_split_row_takes_its_fp8_scale_from_the_whole_row():
    """A row-parallel FP8 layer's slice of each row is rounded with the whole row's scale
    (`fp8_linear_split_row`, row_max standing in for the all-reduce): each half computes
    exactly what one rank computes for those columns, where a half scaled by its own max
    rounds differently."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 128, generator=generator).to(torch.bfloat16)
    x[:, 70] = 50.0                                  # the second half holds each row's max
    fp8 = torch.randn(16, 128, generator=generator).to(torch.float8_e4m3fn)
    scales = torch.rand(16, generator=generator)
    whole_max = x.float().abs().amax(dim=-1)
    xq, x_scales = ql.quantize_rows_fp8_reference(x)          # one rank, the whole row
    assert torch.equal(x_scales, (whole_max / 448.0).clamp_min(1e-12))
    for half in (slice(0, 64), slice(64, 128)):
        x_half, w_half = x[:, half].contiguous(), fp8[:, half].contiguous()
        split = ql.fp8_linear_split_row(x_half, w_half, scales,
                                        lambda amax: torch.maximum(amax, whole_max))
        one_rank = ((xq[:, half].float() * x_scales[:, None])
                    @ (w_half.float() * scales[:, None]).T).to(torch.bfloat16)
        assert torch.equal(split, one_rank)
    alone = ql.fp8_linear(x[:, :64].contiguous(), fp8[:, :64].contiguous(), scales)
    assert not torch.equal(alone, ql.fp8_linear_split_row(
        x[:, :64].contiguous(), fp8[:, :64].contiguous(), scales,
        lambda amax: torch.maximum(amax, whole_max)))
    assert torch.equal(ql.fp8_linear_split_row(x, fp8, scales, lambda amax: amax),
                       ql.fp8_linear_reference(x, fp8, scales))
