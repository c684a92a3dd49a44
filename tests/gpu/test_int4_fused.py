"""The int4 GEMVs' fused split sums and SwiGLU gating on the GPU (quant_gemv.py: FUSED_SUM,
GATED): the same bits as the split-sum launch and as the activation's launch followed by the
plain linear, at every tile the tuner may pick, and under CUDA-graph replay, where a missed
ordering between a split's partial and the last program's sum would show."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from support.int4_tensors import int4_weight, packed_int4
from gpu.tiers import sweep
from support.graph_replays import check_pairs_agree_at_every_replay
from support.seeds import module_seed

pytestmark = pytest.mark.gpu

SEED = module_seed()
# SwiGLU down projections: Llama-3-8B's (group 128) and SmolLM2-135M's (576 wide, group 64)
DOWNS = [((4096, 14336), 128), ((576, 1536), 64)]
# Llama-3-8B's four projections: qkv, o, gate_up, down
LLAMA3 = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def _generator(*salt) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(SEED + hash(salt) % 100_003)


def _one_of_each_form(candidates: list) -> list:
    """The first candidate of each kind, split or not, fused or not: every code path of the
    launch, for a few compiles instead of the tuner's few dozen."""
    forms = {}
    for config in candidates:
        forms.setdefault((config.kind, config.split_k > 1, config.fused_sum), config)
    return list(forms.values())


@pytest.mark.parametrize("every", sweep([False, True], core=[False], ids=["forms", "every"]))
@pytest.mark.parametrize("rows", [1, 16, 64])
@pytest.mark.parametrize("shape, group", DOWNS)
def test_a_gated_launch_gives_the_activation_then_linear_bits(rows, shape, group, every):
    """At one candidate of each form (every candidate in the long tier)."""
    from runtime_service.model.kernels import quant_gemv as qg
    from runtime_service.model.kernels import quant_tuning as qt
    from runtime_service.model.kernels.activation import silu_and_mul

    n, k = shape
    generator = _generator("gated", rows, n, k)
    weight = packed_int4(*int4_weight(n, k, group, torch.bfloat16, generator))
    gate_up = torch.randn(rows, 2 * k, device="cuda", generator=generator).to(torch.bfloat16)
    activated = silu_and_mul(gate_up)
    candidates = qt.int4_candidates(rows, n, k, group, qt.sm_count(gate_up.device))
    for config in candidates if every else _one_of_each_form(candidates):
        gated = qg.launch_int4(gate_up, *weight, group, None, config, gated=True)
        plain = qg.launch_int4(activated, *weight, group, None, config)
        assert torch.equal(gated, plain), f"{config} rows {rows} {shape} (seed {SEED})"


def test_int4_linear_takes_a_gated_x_past_the_gemv_rows():
    """Past the GEMV's rows (prefill) the activation runs first, then the dequantized matmul."""
    from runtime_service.model.kernels import GEMV_ROW_LIMIT
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels.activation import silu_and_mul

    generator = _generator("gated-prefill")
    weight = packed_int4(*int4_weight(576, 1536, 64, torch.bfloat16, generator))
    gate_up = torch.randn(GEMV_ROW_LIMIT + 36, 3072, device="cuda",
                          generator=generator).to(torch.bfloat16)
    assert torch.equal(ql.int4_linear(gate_up, *weight, 64, gated=True),
                       ql.int4_linear(silu_and_mul(gate_up), *weight, 64))
    with pytest.raises(ValueError, match="gate"):
        ql.int4_linear(gate_up[:, :1536], *weight, 64, gated=True)


@pytest.mark.parametrize("rows", [1, 16])
def test_fused_int4_split_sums_give_the_split_sum_launchs_bits_at_every_replay(rows):
    """One fused tile of each kind per Llama-3-8B projection against the same tile with the
    separate sum launch, 200 replays of a graph that runs them all back to back, and every
    arrival counter back at zero after."""
    from runtime_service.model.kernels import quant_gemv as qg
    from runtime_service.model.kernels import quant_tuning as qt

    generator = _generator("fused-int4", rows)
    sms = qt.sm_count(torch.device("cuda"))
    cases = []
    for n, k in LLAMA3:
        fused = [c for c in qt.int4_candidates(rows, n, k, 128, sms) if c.fused_sum]
        one_per_kind = {c.kind: c for c in reversed(fused)}.values()
        assert one_per_kind, (n, k)
        weight = packed_int4(*int4_weight(n, k, 128, torch.bfloat16, generator))
        bias = torch.randn(n, device="cuda", generator=generator).to(torch.bfloat16)
        cases += [(weight, bias, config) for config in one_per_kind]
    x = torch.randn(rows, 14336, device="cuda", generator=generator).to(torch.bfloat16)

    def run_all():
        outs = []
        for weight, bias, config in cases:
            xk = x[:, :weight[0].shape[1] * 2]
            outs.append((qg.launch_int4(xk, *weight, 128, bias, config),
                         qg.launch_int4(xk, *weight, 128, bias,
                                        replace(config, fused_sum=False))))
        return outs

    check_pairs_agree_at_every_replay(run_all, context=f"(seed {SEED})")
