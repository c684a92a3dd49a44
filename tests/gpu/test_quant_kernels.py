"""Quantized linears (int4 / int8 / fp8) against their plain-torch references (CUDA only).

Fresh random weights and inputs each run (the seed is printed on failure), on the layer shapes of
Llama-3-8B and SmolLM2-135M, at odd decode row counts, at a prefill-sized batch, and at every
int4 group size. The kernels compute in float32 from exactly representable operands and round
once, so their outputs differ from the references by float32 summation order and one bf16
rounding; fp8 also re-derives each row's activation scale on the GPU.

The shape tests run each kernel's first (untimed) config, so the tier stays a few compiles per
shape; `test_every_candidate_config_*` runs every config the tuner may pick.
"""

from __future__ import annotations

import pytest
import torch

from support.int4_tensors import int4_weight as _int4_weight
from support.int4_tensors import packed_int4 as _packed
from support.graph_replays import check_pairs_agree_at_every_replay
from support.seeds import module_seed

pytestmark = pytest.mark.gpu

SEED = module_seed()
# (N, K): Llama-3-8B qkv, down; SmolLM2 qkv (576 = 9 groups of 64), gate_up, down; an N that
# is no multiple of any tile.
LLAMA3 = [(6144, 4096), (4096, 14336)]
SMOLLM2 = [(960, 576), (3072, 576), (576, 1536)]
SHAPES = LLAMA3 + SMOLLM2 + [(200, 1024)]
ROWS = [1, 3, 17, 64, 100]
# Every group size on a shape it divides; 576-wide SmolLM2 rows take 32 and 64, not 128.
INT4_CASES = [((4096, 14336), 128), ((4096, 14336), 32), ((6144, 4096), 64),
              ((960, 576), 64), ((3072, 576), 32), ((576, 1536), 128), ((200, 1024), 64)]


@pytest.fixture
def untuned(monkeypatch):
    """Each launch takes its first candidate config instead of timing them all."""
    from runtime_service.model.kernels import quant_tuning

    monkeypatch.setattr(quant_tuning, "tuned_config",
                        lambda key, x, weights, candidates, call: candidates[0])


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _generator(*salt) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(SEED + hash(salt) % 100_003)


def _x(rows: int, k: int, dtype, generator) -> torch.Tensor:
    return torch.randn(rows, k, device="cuda", generator=generator).to(dtype)


def _check(out, ref, bound: float, context: str) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype, context
    assert not out.isnan().any(), f"NaN in output: {context} (seed {SEED})"
    err = _rel_err(out, ref)
    assert err < bound, f"relative error {err:.2e}: {context} (seed {SEED})"


@pytest.mark.parametrize("shape, group", INT4_CASES)
def test_int4_linear_matches_reference(shape, group, untuned):
    from runtime_service.model.kernels.quant_linear import int4_linear, int4_linear_reference

    n, k = shape
    generator = _generator("int4", n, k, group)
    dtype = torch.bfloat16
    qweight, scales, zeros = _int4_weight(n, k, group, dtype, generator)
    bias = torch.randn(n, device="cuda", generator=generator).to(dtype)
    for rows in ROWS:
        x = _x(rows, k, dtype, generator)
        with_bias = bias if rows % 2 else None
        out = int4_linear(x, *_packed(qweight, scales, zeros), group, with_bias)
        ref = int4_linear_reference(x, qweight, scales, zeros, group, with_bias)
        # The dot path rounds each dequantized weight to bf16 before the product.
        _check(out, ref, 4e-3, f"int4 {shape} g{group} M={rows}")


def test_int4_linear_float16_activations(untuned):
    from runtime_service.model.kernels.quant_linear import int4_linear, int4_linear_reference

    generator = _generator("int4-fp16")
    qweight, scales, zeros = _int4_weight(512, 1024, 128, torch.float16, generator)
    for rows in (1, 9, 33):                  # the CUDA-core, swapped and plain dot kernels
        x = _x(rows, 1024, torch.float16, generator)
        _check(int4_linear(x, *_packed(qweight, scales, zeros), 128),
               int4_linear_reference(x, qweight, scales, zeros, 128), 4e-3, f"fp16 M={rows}")


@pytest.mark.parametrize("shape", SHAPES)
def test_int8_linear_matches_reference(shape, untuned):
    from runtime_service.model.kernels.quant_linear import int8_linear, int8_linear_reference

    n, k = shape
    generator = _generator("int8", n, k)
    qweight = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda",
                            generator=generator)
    scales = torch.rand(n, device="cuda", generator=generator) * 0.01 + 1e-3
    bias = torch.randn(n, device="cuda", generator=generator).to(torch.bfloat16)
    for rows in ROWS:
        x = _x(rows, k, torch.bfloat16, generator)
        with_bias = bias if rows % 2 else None
        _check(int8_linear(x, qweight, scales, with_bias),
               int8_linear_reference(x, qweight, scales, with_bias),
               6e-3 if rows > 64 else 2e-3, f"int8 {shape} M={rows}")


@pytest.mark.parametrize("shape", SHAPES)
def test_fp8_linear_matches_reference(shape, untuned):
    from runtime_service.model.kernels.quant_linear import fp8_linear, fp8_linear_reference

    n, k = shape
    generator = _generator("fp8", n, k)
    # Clamped to e4m3's range: torch casts anything past +-464 to NaN.
    qweight = (torch.randn(n, k, device="cuda", generator=generator) * 100).clamp(-448, 448).to(
        torch.float8_e4m3fn)
    scales = torch.rand(n, device="cuda", generator=generator) * 1e-3 + 1e-4
    bias = torch.randn(n, device="cuda", generator=generator).to(torch.bfloat16)
    for rows in ROWS:
        x = _x(rows, k, torch.bfloat16, generator)
        x[0, :7] *= 40                      # an outlier row: its scale differs from the others
        with_bias = bias if rows % 2 else None
        _check(fp8_linear(x, qweight, scales, with_bias),
               fp8_linear_reference(x, qweight, scales, with_bias), 5e-3,
               f"fp8 {shape} M={rows}")


@pytest.mark.parametrize("rows", [1, 16, 64])
def test_every_candidate_config_computes_the_same_function(rows):
    """Every config the tuner may pick; int4 three times on fresh inputs, since a variant of its
    dot kernel once gave wrong sums only sometimes (bench/NOTES.md, run 16)."""
    from runtime_service.model.kernels import fp8_row_gemv as fg
    from runtime_service.model.kernels import quant_gemv as qg
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels import quant_tuning as qt
    from runtime_service.model.kernels.quant_convert import quantize_rows_fp8

    generator = _generator("candidates", rows)
    n, k, group = 4096, 14336, 128
    x = _x(rows, k, torch.bfloat16, generator)
    int4 = _int4_weight(n, k, group, torch.bfloat16, generator)
    packed = _packed(*int4)
    for config in qt.int4_candidates(rows, n, k, group, qt.sm_count(x.device)):
        for _ in range(3):
            x_int4 = _x(rows, k, torch.bfloat16, generator)
            _check(qg.launch_int4(x_int4, *packed, group, None, config),
                   ql.int4_linear_reference(x_int4, *int4, group), 4e-3, f"int4 {config}")
    int8 = (torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda",
                          generator=generator), torch.rand(n, device="cuda") * 0.01)
    ref = ql.int8_linear_reference(x, *int8)
    xq, x_scales = quantize_rows_fp8(x)
    fp8 = (int8[0].float().to(torch.float8_e4m3fn), int8[1])
    ref_fp8 = ql.fp8_linear_reference(x, *fp8)
    for config in qt.channel_candidates(rows, n, k, qt.sm_count(x.device)):
        _check(qg.launch_channel(x, None, *int8, None, x.dtype, config), ref, 2e-3,
               f"int8 {config}")
        _check(qg.launch_channel(xq, x_scales, *fp8, None, x.dtype, config), ref_fp8, 5e-3,
               f"fp8 {config}")
    for config in qt.fp8_candidates(rows, n, k, qt.sm_count(x.device)):
        _check(fg.launch_fp8(x, *fp8, None, config), ref_fp8, 5e-3, f"fp8 {config}")


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_fp8_gemm_tiles_match_the_reference_past_the_gemv_rows(out_dtype):
    """Rows already in e4m3 past the GEMV's 64: every fp8_gemm.py tile and cuBLAS (bf16 only)
    against the float32 reference, with ragged row, column and K tiles and a bias; and the
    entry point, which picks one of them by time (a decode batch) or untimed (600 rows, a
    prefill chunk)."""
    from runtime_service.model.kernels import fp8_gemm
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels.quant_convert import quantize_rows_fp8

    generator = _generator("fp8-gemm", str(out_dtype))
    for n, k in SHAPES:
        qweight = (torch.randn(n, k, device="cuda", generator=generator) * 100).clamp(
            -448, 448).to(torch.float8_e4m3fn)
        scales = torch.rand(n, device="cuda", generator=generator) * 1e-3 + 1e-4
        bias = torch.randn(n, device="cuda", generator=generator).to(out_dtype)
        for rows in (65, 200, 256, 512, 600):
            x = _x(rows, k, out_dtype, generator)
            x[1, :5] *= 40                  # an outlier row: its scale differs from the others
            xq, x_scales = quantize_rows_fp8(x)
            with_bias = bias if rows % 2 else None
            ref = ql.fp8_linear_reference(x, qweight, scales, with_bias)
            candidates = fp8_gemm.fp8_gemm_candidates(rows, n, k, out_dtype)
            assert (candidates[0].kind == "cublas") == (
                out_dtype == torch.bfloat16 and n % 16 == 0 and k % 16 == 0), (n, k)
            for config in candidates:
                _check(fp8_gemm.launch_fp8_gemm(xq, x_scales, qweight, scales, with_bias,
                                                out_dtype, config), ref, 5e-3,
                       f"{config} {(rows, n, k)}")
            if rows in (200, 600):
                _check(ql.fp8_linear_of_codes(xq, x_scales, qweight, scales, with_bias,
                                              out_dtype), ref, 5e-3, f"entry {(rows, n, k)}")


def test_gated_fp8_row_gives_the_activation_launchs_bits_with_every_candidate(untuned):
    """SwiGLU's down projection at one row: the fp8 kernels forming silu(gate) * up as they read
    [gate | up] (its row scale included) give the same bits as the activation kernel's launch
    followed by the plain linear, with every candidate the tuner may pick, and so does the
    entry point (quant_linear.fp8_linear(..., gated=True), on the first candidate)."""
    from runtime_service.model.kernels import fp8_row_gemv as fg
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels import quant_tuning as qt
    from runtime_service.model.kernels.activation import silu_and_mul

    generator = _generator("gated")
    for n, k in ((4096, 14336), (576, 1536)):
        gate_up = _x(1, 2 * k, torch.bfloat16, generator)
        gate_up[0, :5] *= 30                # outliers decide the row's scale
        w = (torch.randn(n, k, device="cuda", generator=generator).to(torch.float8_e4m3fn),
             torch.rand(n, device="cuda", generator=generator) * 0.01)
        bias = torch.randn(n, device="cuda", generator=generator).to(torch.bfloat16)
        act = silu_and_mul(gate_up)
        for config in qt.fp8_candidates(1, n, k, qt.sm_count(gate_up.device)):
            assert torch.equal(fg.launch_fp8(gate_up, *w, bias, config, gated=True),
                               fg.launch_fp8(act, *w, bias, config)), f"{config} (seed {SEED})"
        assert torch.equal(ql.fp8_linear(gate_up, *w, bias, gated=True),
                           ql.fp8_linear(act, *w, bias)), f"{(n, k)} (seed {SEED})"

def test_gated_fp8_rows_quantize_the_activation_launchs_bits_without_it(untuned):
    """More rows than one: the launch that quantizes the rows forms silu(gate) * up itself
    (`quantize_rows_fp8(gated=True)`), giving the codes and scales of the activation kernel
    followed by the plain quantization, and so the same linear, bit for bit, on both sides of
    the GEMV row limit (the tuned dot, then torch._scaled_mm)."""
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels.activation import silu_and_mul
    from runtime_service.model.kernels.quant_convert import quantize_rows_fp8

    generator = _generator("gated-rows")
    for n, k in ((4096, 14336), (576, 1536), (64, 200)):
        w = (torch.randn(n, k, device="cuda", generator=generator).to(torch.float8_e4m3fn),
             torch.rand(n, device="cuda", generator=generator) * 0.01)
        for rows in (2, 3, 64, 65, 300):
            gate_up = _x(rows, 2 * k, torch.bfloat16, generator)
            gate_up[:, :3] *= 30            # outliers decide the rows' scales
            act = silu_and_mul(gate_up)
            codes, scales = quantize_rows_fp8(gate_up, gated=True)
            plain_codes, plain_scales = quantize_rows_fp8(act)
            assert torch.equal(scales, plain_scales), f"{(rows, n, k)} (seed {SEED})"
            assert torch.equal(codes.view(torch.uint8), plain_codes.view(torch.uint8))
            assert torch.equal(ql.fp8_linear(gate_up, *w, None, gated=True),
                               ql.fp8_linear(act, *w)), f"{(rows, n, k)} (seed {SEED})"


def test_down_projection_scale_from_the_gate_up_launchs_block_maxima(untuned):
    """FP8 at one row: every gate_up tile that can leave the maxima of |silu(gate) * up| per
    column block gives the plain launch's output and the activation kernel's maxima, and the
    down projection taking its row scale from them gives the bits of finding it itself, with
    every candidate (a maximum 1.5 times larger changes them: the scale is really read); the layer
    entry points agree."""
    from runtime_service.model.kernels import fp8_row_gemv as fg
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels import quant_tuning as qt
    from runtime_service.model.kernels.activation import silu_and_mul

    generator = _generator("gate-amax")
    sms = qt.sm_count(torch.device("cuda"))
    for inter, hidden in ((14336, 4096), (1536, 576)):
        x = _x(1, hidden, torch.bfloat16, generator)
        w_gu = (torch.randn(2 * inter, hidden, device="cuda", generator=generator)
                .to(torch.float8_e4m3fn),
                torch.rand(2 * inter, device="cuda", generator=generator) * 0.01)
        w_d = (torch.randn(hidden, inter, device="cuda", generator=generator)
               .to(torch.float8_e4m3fn),
               torch.rand(hidden, device="cuda", generator=generator) * 0.01)
        gate_up_tiles = [c for c in qt.fp8_candidates(1, 2 * inter, hidden, sms)
                         if fg.gives_gate_amax(c, 2 * inter)]
        assert gate_up_tiles, inter
        down_tiles = [c for c in qt.fp8_candidates(1, hidden, inter, sms) if c.kind != "dot"]
        for config in gate_up_tiles:
            gate_up, amax = fg.launch_fp8_gate_up(x, *w_gu, None, config)
            assert amax is not None and torch.equal(gate_up, fg.launch_fp8(x, *w_gu, None,
                                                                           config)), str(config)
            expected = silu_and_mul(gate_up).float().abs().view(-1, config.block_n).amax(dim=1)
            assert torch.equal(amax, expected), f"{config} (seed {SEED})"
        for down in down_tiles:
            found = fg.launch_fp8(gate_up, *w_d, None, down, gated=True)
            assert torch.equal(fg.launch_fp8(gate_up, *w_d, None, down, gated=True,
                                             gate_amax=amax), found), f"{down} (seed {SEED})"
            assert not torch.equal(fg.launch_fp8(gate_up, *w_d, None, down, gated=True,
                                                 gate_amax=amax * 1.5), found), str(down)
        gate_up, amax = ql.fp8_gate_up(x, *w_gu)
        assert amax is not None
        assert torch.equal(ql.fp8_linear(gate_up, *w_d, gated=True, gate_amax=amax),
                           ql.fp8_linear(silu_and_mul(gate_up), *w_d)), f"seed {SEED}"


def test_fused_split_sums_give_the_split_sum_launchs_bits_at_every_replay():
    """The fp8 one-row kernel with its split sums fused (the last program of each column block
    sums the partials, ordered by an arrival counter) against the same tile with the separate
    sum launch: the same bits, over 200 replays of a CUDA graph that runs each of the seven
    Llama-3-8B shapes' tiles back to back (a missed ordering would show as a stale partial
    some of the time), and every counter back at zero after."""
    from dataclasses import replace

    from runtime_service.model.kernels import fp8_row_gemv as fg
    from runtime_service.model.kernels import quant_tuning as qt

    generator = _generator("fused-split-sum")
    sms = qt.sm_count(torch.device("cuda"))
    cases = []
    # The lm_head shape (128256 x 4096) fills the GPU unsplit, so it has no fused tiles.
    for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)):
        fused = [c for c in qt.fp8_candidates(1, n, k, sms) if c.fused_sum]
        assert fused, (n, k)
        w = (torch.randn(n, k, device="cuda", generator=generator).to(torch.float8_e4m3fn),
             torch.rand(n, device="cuda", generator=generator) * 0.01)
        bias = torch.randn(n, device="cuda", generator=generator).to(torch.bfloat16)
        cases += [(w, bias, config) for config in fused]
    x = _x(1, 14336, torch.bfloat16, generator)

    def run_all():
        outs = []
        for w, bias, config in cases:
            xk = x[:, :w[0].shape[1]]
            outs.append((fg.launch_fp8(xk, *w, bias, config),
                         fg.launch_fp8(xk, *w, bias, replace(config, fused_sum=False))))
        return outs

    check_pairs_agree_at_every_replay(run_all, context="")


def test_the_tuner_skips_a_candidate_whose_output_disagrees_with_the_default(caplog):
    """A candidate that a GPU or compiler gets wrong must not win for being fast: here the
    second one's output is scaled by 3."""
    from runtime_service.model.kernels import fp8_row_gemv as fg
    from runtime_service.model.kernels import quant_tuning as qt
    from runtime_service.model.kernels.gemv import GemvConfig

    generator = _generator("tuner-gate")
    x = _x(1, 1024, torch.bfloat16, generator)
    weights = (torch.randn(256, 1024, device="cuda", generator=generator).to(torch.float8_e4m3fn),
               torch.rand(256, device="cuda", generator=generator) * 0.01)
    good, bad = GemvConfig("fma", 16, 512, 4, 1), GemvConfig("fma", 8, 256, 1, 1)

    def call(x_, w, config, warmup=False):
        out = fg.launch_fp8(x_, *w, None, config, warmup)
        return out if config == good else out * 3

    key = ("fp8-tuner-gate-test", x.device, x.dtype, 1, 256, 1024)
    try:
        with caplog.at_level("WARNING", logger="kiln.kernels.quant_tuning"):
            assert qt.tuned_config(key, x, weights, [good, bad], call) == good
        assert "disagrees" in caplog.text
    finally:
        qt._tuned.pop(key, None)


def test_fp8_activation_quantization_matches_reference_bit_for_bit():
    from runtime_service.model.kernels.quant_convert import quantize_rows_fp8
    from runtime_service.model.kernels.quant_linear import quantize_rows_fp8_reference

    x = _x(33, 14336, torch.bfloat16, _generator("fp8-rows"))
    x[3] = 0                                # an all-zero row takes the 1e-12 floor, no NaN
    xq, scales = quantize_rows_fp8(x)
    xq_ref, scales_ref = quantize_rows_fp8_reference(x)
    assert torch.equal(scales, scales_ref), f"seed {SEED}"
    assert torch.equal(xq.view(torch.uint8), xq_ref.view(torch.uint8)), f"seed {SEED}"


def test_fp8_rows_in_one_pass_and_in_passes_give_the_same_bits():
    """A row that fits 16384 values is quantized from registers in one pass (read and, gated,
    activated once); a longer one in passes that read it twice. Both, plain and gated, must
    give the same codes and scales, and the passes those of the plain-torch reference."""
    from runtime_service.model.kernels import quant_convert as qc
    from runtime_service.model.kernels.activation import silu_and_mul
    from runtime_service.model.kernels.quant_linear import quantize_rows_fp8_reference

    generator = _generator("fp8-one-pass")
    for rows, k, gated in ((1, 4096, False), (256, 4096, False), (256, 14336, True),
                           (3, 5000, True), (64, 16384, True)):
        x = _x(rows, 2 * k if gated else k, torch.bfloat16, generator)
        x[:, 11] *= 30                      # an outlier sets each row's scale
        found = []
        for limit in (qc.ONE_PASS_LIMIT, 1024):
            xq = torch.empty(rows, k, dtype=torch.float8_e4m3fn, device="cuda")
            scales = torch.empty(rows, dtype=torch.float32, device="cuda")
            qc.launch_quantize_rows(x, xq, scales, k, gated, one_pass_limit=limit)
            found.append((xq.view(torch.uint8), scales))
        (one, one_scales), (passes, pass_scales) = found
        context = f"{(rows, k, gated)} (seed {SEED})"
        assert torch.equal(one, passes) and torch.equal(one_scales, pass_scales), context
        ref_codes, ref_scales = quantize_rows_fp8_reference(silu_and_mul(x) if gated else x)
        assert torch.equal(pass_scales, ref_scales), context
        assert torch.equal(passes, ref_codes.view(torch.uint8)), context


def test_decode_linears_replay_in_a_cuda_graph(untuned):
    """Captured after a first eager call: replays with new inputs give the eager results (no
    host sync or input-dependent allocation inside; bench_quant_kernels.py captures the tuned
    path)."""
    from runtime_service.model.kernels import quant_linear as ql

    generator = _generator("graph")
    dtype = torch.bfloat16
    n, k, rows = 1024, 2048, 5
    int4 = _packed(*_int4_weight(n, k, 64, dtype, generator))
    int8 = (torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda",
                          generator=generator), torch.rand(n, device="cuda") * 0.01)
    fp8 = (torch.randn(n, k, device="cuda", generator=generator).to(torch.float8_e4m3fn),
           torch.rand(n, device="cuda") * 0.01)
    calls = [lambda x: ql.int4_linear(x, *int4, 64), lambda x: ql.int8_linear(x, *int8),
             lambda x: ql.fp8_linear(x, *fp8)]
    x = _x(rows, k, dtype, generator)
    for call in calls:
        call(x)                             # tunes before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [call(x) for call in calls]
    for _ in range(2):
        x.copy_(_x(rows, k, dtype, generator))
        graph.replay()
        for call, out in zip(calls, outs):
            assert torch.equal(out, call(x)), f"seed {SEED}"


def test_bad_inputs_get_clear_errors():
    from runtime_service.model.kernels import quant_linear as ql

    qweight, scales, zeros = _int4_weight(64, 256, 64, torch.bfloat16, _generator("bad"))
    x = torch.randn(2, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="group_size"):
        ql.int4_linear(x, qweight, scales, zeros, 48)
    with pytest.raises(ValueError, match="scales"):
        ql.int4_linear(x, qweight, scales.float(), zeros, 64)
    with pytest.raises(ValueError, match=r"x must be \[M, 256\]"):
        ql.int4_linear(x[:, :128], qweight, scales, zeros, 64)
    with pytest.raises(ValueError, match="qweight must be torch.int8"):
        ql.int8_linear(x, qweight, torch.ones(64, device="cuda"))
    with pytest.raises(ValueError, match="scales must be float32"):
        ql.fp8_linear(x, torch.zeros(64, 256, device="cuda").to(torch.float8_e4m3fn),
                      torch.ones(64, device="cuda", dtype=torch.bfloat16))


def test_quantized_tuning_leaves_and_comes_back_as_records(monkeypatch):
    """What the quantized GEMVs tune goes into the pod's start-up cache with the bf16 GEMV's
    records and is taken back from it, so a second start of a quantized engine tunes nothing."""
    from runtime_service.model import kernel_tuning
    from runtime_service.model.kernels import fp8_gemm
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels import quant_tuning as qt
    from runtime_service.model.kernels.quant_convert import quantize_rows_fp8

    monkeypatch.setattr(qt, "_tuned", {})
    fewer = lambda make: lambda *a: make(*a)[:2]  # noqa: E731 - two compiles per shape
    monkeypatch.setattr(qt, "int4_candidates", fewer(qt.int4_candidates))
    monkeypatch.setattr(qt, "fp8_candidates", fewer(qt.fp8_candidates))
    generator = _generator("records")
    x = _x(1, 1024, torch.bfloat16, generator)
    ql.int4_linear(x, *_int4_weight(256, 1024, 64, torch.bfloat16, generator), 64)
    fp8 = (torch.randn(256, 1024, device="cuda").to(torch.float8_e4m3fn),
           torch.rand(256, device="cuda"))
    ql.fp8_linear(x, *fp8)
    # a decode batch past the GEMV's rows: cuBLAS or fp8_gemm.py's tiles, with their row tile
    monkeypatch.setattr(fp8_gemm, "fp8_gemm_candidates", fewer(fp8_gemm.fp8_gemm_candidates))
    xq, x_scales = quantize_rows_fp8(_x(100, 1024, torch.bfloat16, generator))
    ql.fp8_linear_of_codes(xq, x_scales, *fp8, None, torch.bfloat16)
    tuned = qt.tuned_configs()
    assert {key[0] for key in tuned} == {"int4", "fp8", "fp8_rows"}
    records = kernel_tuning.export_tuning(x.device)
    assert sorted(r["kind"] for r in records if "kind" in r) == ["fp8", "fp8_rows", "int4"]
    monkeypatch.setattr(qt, "_tuned", {})
    kernel_tuning.import_tuning(x.device, records)
    assert qt.tuned_configs() == tuned
    with pytest.raises(ValueError, match="quantized GEMV tuning record"):
        kernel_tuning.import_tuning(x.device, [{"kind": "int3", "dtype": "bfloat16", "rows": 1,
                                                "n": 8, "k": 64, "config": {}}])
