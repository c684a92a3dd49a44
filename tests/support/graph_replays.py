"""Fused split sums under CUDA-graph replay: a kernel whose last program sums the other
programs' partials (an arrival counter orders them) is compared with the same tile and a
separate sum launch, replay after replay, since a missed ordering shows only some of the time."""

from __future__ import annotations

import torch


def check_pairs_agree_at_every_replay(run_all, replays: int = 200, context: str = "") -> None:
    """`run_all()` launches every case and returns [(fused output, separate-sum output)]; it
    runs once eagerly (which sizes the arrival counters before the capture), then is captured
    in a graph and replayed `replays` times. Asserts each pair is equal at every replay and
    every arrival counter is back at zero."""
    from runtime_service.model.kernels import arrival_counts

    run_all()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run_all()
    mismatches = 0
    for _ in range(replays):
        graph.replay()
        torch.cuda.synchronize()
        mismatches += sum(not torch.equal(fused, apart) for fused, apart in outs)
    assert mismatches == 0, f"{mismatches} of {replays * len(outs)} launches differed {context}"
    assert not arrival_counts._counts[torch.device("cuda", torch.cuda.current_device())].any()
