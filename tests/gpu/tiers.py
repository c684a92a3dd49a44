"""The GPU suite in two tiers. `pytest -m gpu` runs the default tier: every kernel and the CUDA
engine against their references, on the values that exercise each code path (a few minutes on
one H100/H200). The sweeps over every dtype, shape, batch and launch config carry `gpu_long`
and run only when asked for (`pytest -m gpu_long`); tests/conftest.py leaves them out otherwise.
"""

from __future__ import annotations

import pytest

LONG = pytest.mark.gpu_long


def sweep(values, core, ids=None) -> list:
    """`values` as parametrize entries, those not in `core` marked gpu_long."""
    params = []
    for index, value in enumerate(values):
        marks = () if value in core else (LONG,)
        label = ids(value) if callable(ids) else (ids[index] if ids else None)
        params.append(pytest.param(value, marks=marks, id=label))
    return params
