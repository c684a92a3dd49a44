"""The decode GEMV against its plain-torch reference on fresh random inputs (CUDA only).

Inputs are drawn anew on every run (the seed is printed on failure) and outputs are poisoned
with NaN first, so an unwritten element fails. The kernels sum float32 products in their own
order and round once, so each element may differ from the reference by one unit in the last
place plus the float32 summation error; almost all elements must round identically. The gated
mode (x = [gate | up], input row silu(gate) * up) must equal silu_and_mul followed by the plain
GEMV bit for bit under the same config.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gpu.tiers import sweep
from support.seeds import module_seed

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float16]
SEED = module_seed()
# (N, K): non-multiples of every block size and an unaligned K; Llama-2-7B's down_proj.
SHAPES = [(1000, 4104), (4096, 11008), (96, 64)]
ULP = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


def _inputs(rows: int, n: int, k: int, dtype: torch.dtype, with_bias: bool, salt: int = 0):
    generator = torch.Generator(device="cuda").manual_seed(SEED + salt)
    x = torch.randn(rows, k, device="cuda", generator=generator).to(dtype)
    weight = (torch.randn(n, k, device="cuda", generator=generator) * k ** -0.5).to(dtype)
    bias = torch.randn(n, device="cuda", generator=generator).to(dtype) if with_bias else None
    return x, weight, bias


def _gated_inputs(rows: int, n: int, k: int, dtype: torch.dtype, with_bias: bool, salt: int = 0):
    """gate_up [rows, 2k] = [gate | up] for a down projection weight [n, k]."""
    _, weight, bias = _inputs(rows, n, k, dtype, with_bias, salt)
    generator = torch.Generator(device="cuda").manual_seed(SEED + salt + 7919)
    gate_up = (torch.randn(rows, 2 * k, device="cuda", generator=generator) * 2).to(dtype)
    return gate_up, weight, bias


def _assert_close_to_reference(out, x, weight, bias, context: str, gated: bool = False) -> None:
    from runtime_service.model.kernels.activation import silu_and_mul_reference
    from runtime_service.model.kernels.gemv import gemv_reference

    if gated:               # torch rounds silu(gate) * up where the kernels do
        x = silu_and_mul_reference(x)
    ref = gemv_reference(x, weight, bias).float()
    scale = x.float().abs() @ weight.float().abs().T
    err = (out.float() - ref).abs()
    bound = ULP[x.dtype] * ref.abs() + 1e-4 * scale + 1e-6
    where = f"{context} (seed {SEED})"
    assert not out.isnan().any(), f"unwritten output: {where}"
    assert (err <= bound).all(), f"error {(err / bound).max().item():.2f}x the bound: {where}"
    differing = (out.float() != ref).float().mean().item()
    assert differing < 0.05, f"{differing:.1%} of elements round unlike the reference: {where}"


def _configs():
    from runtime_service.model.kernels.gemv import _DOT_TILES, _FMA_TILES

    fma, dot = _FMA_TILES[0], _DOT_TILES[0]
    return [fma, replace(fma, split_k=3), dot, replace(dot, split_k=3)]


@pytest.mark.parametrize("dtype", sweep(DTYPES, core=(torch.bfloat16,), ids=str))
@pytest.mark.parametrize("shape", sweep(SHAPES, core=((1000, 4104), (96, 64)), ids=str))
@pytest.mark.parametrize("config_index", range(4))
def test_each_kernel_matches_reference_for_every_row_count(config_index, shape, dtype):
    from runtime_service.model.kernels.gemv import MAX_ROWS, gemv

    config = _configs()[config_index]
    n, k = shape
    row_counts = range(1, MAX_ROWS + 1) if config.kind == "dot" else range(1, 9)
    if shape == (4096, 11008):                  # the large shape: the row-tile edges only
        row_counts = [r for r in row_counts if r <= 2 or r % 16 in (0, 1)]
    for rows in row_counts:
        for with_bias in (False, True):
            x, weight, bias = _inputs(rows, n, k, dtype, with_bias, salt=rows)
            out = torch.full((rows, n), float("nan"), dtype=dtype, device="cuda")
            gemv(x, weight, bias, config=config, out=out)
            _assert_close_to_reference(out, x, weight, bias,
                                       f"{config}, rows {rows}, {shape}, bias {with_bias}")


@pytest.mark.parametrize("rows", sweep([1, 5, 40], core=(1, 40)))
def test_every_tuning_candidate_matches_reference(rows):
    from runtime_service.model.kernels.gemv import candidate_configs, gemv
    from runtime_service.model.kernels.tuning_clock import sm_count

    n, k = 4096, 11008
    x, weight, _ = _inputs(rows, n, k, torch.bfloat16, False)
    for config in candidate_configs(rows, n, k, sm_count(torch.cuda.current_device())):
        out = torch.full((rows, n), float("nan"), dtype=x.dtype, device="cuda")
        gemv(x, weight, config=config, out=out)
        _assert_close_to_reference(out, x, weight, None, f"{config}, rows {rows}")


@pytest.mark.parametrize("dtype, shape", [(torch.bfloat16, SHAPES[0]), (torch.bfloat16, SHAPES[1]),
                                          (torch.float16, SHAPES[1])])
@pytest.mark.parametrize("rows", sweep([1, 3, 8, 24, 64], core=(1, 64)))
def test_tuned_gemv_matches_reference(rows, shape, dtype):
    from runtime_service.model.kernels.gemv import gemv, tuned_config

    x, weight, bias = _inputs(rows, *shape, dtype, True)
    out = gemv(x, weight, bias)
    _assert_close_to_reference(out, x, weight, bias, f"tuned {tuned_config(x, weight)}, "
                                                     f"rows {rows}, {shape}")


@pytest.mark.parametrize("split_k", [None, 4])
@pytest.mark.parametrize("rows", [1, 4, 48])
def test_replays_inside_a_cuda_graph(rows, split_k):
    from runtime_service.model.kernels.gemv import GemvConfig, gemv

    n, k = 4096, 11008
    config = GemvConfig("dot", 64, 128, 4, 4, split_k) if split_k else None
    x, weight, bias = _inputs(rows, n, k, torch.bfloat16, True)
    gemv(x, weight, bias, config=config)                  # tunes and compiles before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemv(x, weight, bias, config=config)
    for salt in range(1, 4):
        fresh, _, _ = _inputs(rows, n, k, torch.bfloat16, False, salt=salt)
        x.copy_(fresh)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        _assert_close_to_reference(out, x, weight, bias, f"replay {salt}, rows {rows}")


BAD_INPUTS = {   # name -> call given a good x [2, 64], weight [32, 64] and the module
    "3-D x": lambda x, w, g: g.gemv(x[None], w),
    "K mismatch": lambda x, w, g: g.gemv(x, w[:, :48]),
    "too many rows": lambda x, w, g: g.gemv(x.repeat(g.MAX_ROWS, 1), w),
    "no rows": lambda x, w, g: g.gemv(x[:0], w),
    "float32": lambda x, w, g: g.gemv(x.float(), w.float()),
    "mixed dtypes": lambda x, w, g: g.gemv(x.half(), w),
    "strided K": lambda x, w, g: g.gemv(x.T.contiguous().T, w),
    "strided weight": lambda x, w, g: g.gemv(x, w.T.contiguous().T),
    "bias length": lambda x, w, g: g.gemv(x, w, w[0, :31]),
    "bias dtype": lambda x, w, g: g.gemv(x, w, w[:, 0].float()),
    "out shape": lambda x, w, g: g.gemv(x, w, out=w[:2, :31]),
    "dot tile too narrow": lambda x, w, g: g.GemvConfig("dot", 8, 128),
    "tile not a power of two": lambda x, w, g: g.GemvConfig("fma", 24, 128),
    "gated x not [M, 2K]": lambda x, w, g: g.gemv(x, w, gated=True),
    "gated x of odd width": lambda x, w, g: g.gemv(torch.cat([x, x, x[:, :1]], 1), w, gated=True),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_launcher_rejects_bad_inputs(case):
    from runtime_service.model.kernels import gemv

    x = torch.randn(2, 64, dtype=torch.bfloat16, device="cuda")
    weight = torch.randn(32, 64, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError):
        BAD_INPUTS[case](x, weight, gemv)


def test_layers_take_the_gemv_for_decode_rows_only():
    from runtime_service.model.kernels.gemv import tuned_configs
    from runtime_service.model.layers.linear import GEMV_MAX_ROWS, ColumnParallelLinear, gemv_enabled

    layer = ColumnParallelLinear(4104, (1000,), True).to(device="cuda", dtype=torch.bfloat16)
    x, weight, bias = _inputs(GEMV_MAX_ROWS + 1, 1000, 4104, torch.bfloat16, True)
    layer.weight.data, layer.bias.data = weight, bias
    assert torch.equal(layer(x), torch.nn.functional.linear(x, weight, bias))   # cuBLAS
    decode = x[:1]
    with gemv_enabled(False):
        assert torch.equal(layer(decode), torch.nn.functional.linear(decode, weight, bias))
    _assert_close_to_reference(layer(decode), decode, weight, bias, "layer, one row")
    assert any(key[2:] == (1, 1000, 4104, False) for key in tuned_configs())


def _gated_configs():
    from runtime_service.model.kernels.gemv import _DOT_TILES, _FMA_TILES, CUBLAS

    fma_k512, fma_k256, dot = _FMA_TILES[0], _FMA_TILES[3], _DOT_TILES[0]
    return [fma_k512, fma_k256, replace(fma_k256, split_k=3), dot, replace(dot, split_k=3),
            CUBLAS]


@pytest.mark.parametrize("dtype", sweep(DTYPES, core=(torch.bfloat16,), ids=str))
@pytest.mark.parametrize("shape", sweep([(4096, 11008), (1000, 4104)], core=((1000, 4104),),
                                        ids=str))
@pytest.mark.parametrize("config_index", range(6))
def test_gated_gemv_equals_silu_and_mul_then_gemv_bit_for_bit(config_index, shape, dtype):
    from runtime_service.model.kernels.activation import silu_and_mul
    from runtime_service.model.kernels.gemv import gemv

    config = _gated_configs()[config_index]
    n, k = shape
    for rows in (*range(1, 9), 17, 40, 64):
        for with_bias in (False, True):
            gate_up, weight, bias = _gated_inputs(rows, n, k, dtype, with_bias, salt=rows)
            out = torch.full((rows, n), float("nan"), dtype=dtype, device="cuda")
            gemv(gate_up, weight, bias, config=config, out=out, gated=True)
            expected = gemv(silu_and_mul(gate_up), weight, bias, config=config)
            where = f"{config}, rows {rows}, {shape}, {dtype}, bias {with_bias} (seed {SEED})"
            assert not out.isnan().any(), f"unwritten output: {where}"
            differing = (out != expected).sum().item()
            assert differing == 0, f"{differing} elements differ from the unfused path: {where}"


@pytest.mark.parametrize("dtype, shape", [(torch.bfloat16, (1000, 4104)),
                                          (torch.bfloat16, (4096, 11008)),
                                          (torch.float16, (4096, 11008))])
@pytest.mark.parametrize("rows", sweep([1, 3, 8, 40], core=(1, 40)))
def test_tuned_gated_gemv_matches_reference(rows, shape, dtype):
    from runtime_service.model.kernels.gemv import gemv, tuned_config, tuned_configs

    gate_up, weight, bias = _gated_inputs(rows, *shape, dtype, True)
    out = gemv(gate_up, weight, bias, gated=True)
    config = tuned_config(gate_up, weight, gated=True)
    _assert_close_to_reference(out, gate_up, weight, bias,
                               f"tuned gated {config}, rows {rows}, {shape}", gated=True)
    bucket = 1 << (rows - 1).bit_length()
    assert any(key[1:] == (dtype, bucket, *shape, True) for key in tuned_configs())


@pytest.mark.parametrize("split_k", [None, 4])
@pytest.mark.parametrize("rows", [1, 4, 64])
def test_gated_gemv_replays_inside_a_cuda_graph(rows, split_k):
    from runtime_service.model.kernels.gemv import GemvConfig, gemv, tuned_config

    n, k = 4096, 11008
    gate_up, weight, bias = _gated_inputs(rows, n, k, torch.bfloat16, True)
    # Tunes and compiles before capture.
    config = GemvConfig("dot", 64, 128, 4, 4, split_k) if split_k else tuned_config(
        gate_up, weight, gated=True)
    gemv(gate_up, weight, bias, config=config, gated=True)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemv(gate_up, weight, bias, config=config, gated=True)
    for salt in range(1, 4):
        fresh, _, _ = _gated_inputs(rows, n, k, torch.bfloat16, False, salt=salt)
        gate_up.copy_(fresh)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        if config.kind != "cublas":     # cuBLAS may pick another algorithm when captured
            eager = gemv(gate_up, weight, bias, config=config, gated=True)
            assert torch.equal(out, eager), f"replay {salt} differs from eager (seed {SEED})"
        _assert_close_to_reference(out, gate_up, weight, bias, f"replay {salt}, rows {rows}",
                                   gated=True)


def test_down_projection_of_gate_up_takes_the_gated_gemv_for_decode_rows_only():
    from runtime_service.model.kernels.activation import silu_and_mul
    from runtime_service.model.kernels.gemv import gemv, tuned_config
    from runtime_service.model.layers.linear import GEMV_MAX_ROWS, RowParallelLinear, gemv_enabled

    layer = RowParallelLinear(4104, 1000, True).to(device="cuda", dtype=torch.bfloat16)
    gate_up, weight, bias = _gated_inputs(GEMV_MAX_ROWS + 1, 1000, 4104, torch.bfloat16, True)
    layer.weight.data, layer.bias.data = weight, bias
    unfused = torch.nn.functional.linear(silu_and_mul(gate_up), weight) + bias
    assert torch.equal(layer.forward_gate_up(gate_up), unfused)               # cuBLAS
    decode = gate_up[:2]
    with gemv_enabled(False):
        unfused = torch.nn.functional.linear(silu_and_mul(decode), weight) + bias
        assert torch.equal(layer.forward_gate_up(decode), unfused)
    out = layer.forward_gate_up(decode)
    config = tuned_config(decode, weight, gated=True)
    assert torch.equal(out, gemv(silu_and_mul(decode), weight, config=config) + bias)


def test_tuning_records_come_back_and_skip_the_tuner():
    """What a pod caches (export_tuned) makes a fresh process choose the same configs without
    timing anything."""
    import json

    from runtime_service.model.kernels import gemv

    x = torch.randn(1, 640, dtype=torch.bfloat16, device="cuda")
    weight = torch.randn(384, 640, dtype=torch.bfloat16, device="cuda")
    expected = gemv.gemv(x, weight)
    records = json.loads(json.dumps(gemv.export_tuned(x.device)))
    assert any((r["n"], r["k"], r["rows"]) == (384, 640, 1) for r in records)
    saved = dict(gemv._tuned)
    gemv._tuned.clear()
    try:
        assert gemv.import_tuned(x.device, records) == len(records)
        tuned_before = gemv.tuning_totals()[0]
        assert torch.equal(gemv.gemv(x, weight), expected)
        assert gemv.tuning_totals()[0] == tuned_before
        assert {k: v for k, v in gemv.tuned_configs().items() if k[0] == x.device} == \
            {k: v for k, v in saved.items() if k[0] == x.device}
        with pytest.raises(ValueError, match="not a gemv tuning record"):
            gemv.import_tuned(x.device, [{**records[0], "rows": 3}])
    finally:
        gemv._tuned.clear()
        gemv._tuned.update(saved)
