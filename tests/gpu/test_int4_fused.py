"""The int4 GEMVs' fused split sums on the GPU (quant_gemv.py: FUSED_SUM): the same bits as the
split-sum launch under CUDA-graph replay, where a missed ordering between a split's partial and
the last program's sum would show. Every fused candidate against the reference is
test_quant_kernels.py's `test_every_candidate_config_*`."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from support.int4_tensors import int4_weight, packed_int4
from support.graph_replays import check_pairs_agree_at_every_replay
from support.seeds import module_seed

pytestmark = pytest.mark.gpu

SEED = module_seed()
# Llama-3-8B's four projections: qkv, o, gate_up, down
LLAMA3 = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def _generator(*salt) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(SEED + hash(salt) % 100_003)


@pytest.mark.parametrize("rows", [1, 16])
def test_fused_int4_split_sums_give_the_split_sum_launchs_bits_at_every_replay(rows):
    """One fused tile of each kind per Llama-3-8B projection that splits at this many rows
    (gate_up fills the GPU unsplit past one row) against the same tile with the separate sum
    launch, 200 replays of a graph that runs them all back to back, and every arrival counter
    back at zero after."""
    from runtime_service.model.kernels import quant_gemv as qg
    from runtime_service.model.kernels import quant_tuning as qt

    generator = _generator("fused-int4", rows)
    sms = qt.sm_count(torch.device("cuda"))
    cases = []
    for n, k in LLAMA3:
        fused = [c for c in qt.int4_candidates(rows, n, k, 128, sms) if c.fused_sum]
        one_per_kind = {c.kind: c for c in reversed(fused)}.values()
        weight = packed_int4(*int4_weight(n, k, 128, torch.bfloat16, generator))
        bias = torch.randn(n, device="cuda", generator=generator).to(torch.bfloat16)
        cases += [(weight, bias, config) for config in one_per_kind]
    assert len(cases) >= 3, [str(config) for _, _, config in cases]
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
