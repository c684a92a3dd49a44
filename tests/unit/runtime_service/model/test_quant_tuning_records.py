"""The quantized GEMVs' tuning records (kernels/quant_tuning.py) round-trip for every weight
kind the tuner keys, with every field of the config: a kind the import did not know made a pod's
start-up cache ignored whole, so the second start tuned again (bench/NOTES.md, run 27b)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")


def test_every_kind_round_trips_with_its_row_tile(monkeypatch):
    from runtime_service.model.kernels import quant_tuning as qt
    from runtime_service.model.kernels.gemv import GemvConfig

    device = torch.device("cuda", 0)        # a key only: nothing runs
    tuned = {}
    for i, kind in enumerate(qt._KINDS):
        key = (kind, device, torch.bfloat16, 1 << i, 64 * (i + 1), 4096)
        tuned[key + ((128,) if kind == "int4" else ())] = GemvConfig(
            "dot", 64, 128, 4, 3, block_m=64 if kind == "fp8_rows" else 0)
    monkeypatch.setattr(qt, "_tuned", dict(tuned))
    records = qt.export_tuned(device)
    assert len(records) == len(tuned)
    monkeypatch.setattr(qt, "_tuned", {})
    assert qt.import_tuned(device, records) == len(tuned)
    assert qt.tuned_configs() == tuned
    assert "fp8_rows" in qt._KINDS


def test_a_record_of_an_unknown_kind_or_field_is_refused(monkeypatch):
    from runtime_service.model.kernels import quant_tuning as qt

    monkeypatch.setattr(qt, "_tuned", {})
    good = {"kind": "fp8_rows", "dtype": "bfloat16", "rows": 256, "n": 64, "k": 128,
            "group": None, "config": {"kind": "dot", "block_n": 64, "block_k": 128,
                                      "block_m": 128}}
    device = torch.device("cuda", 0)
    for bad in ({**good, "kind": "int3"}, {**good, "config": {**good["config"], "tile": 3}},
                {**good, "config": {**good["config"], "block_m": 24}}):
        with pytest.raises(ValueError, match="quantized GEMV tuning record"):
            qt.import_tuned(device, [good, bad])
        assert qt.tuned_configs() == {}         # nothing taken from a list with a bad record
    assert qt.import_tuned(device, [good]) == 1
