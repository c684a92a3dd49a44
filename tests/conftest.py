"""Shared test setup: the `gpu` marker skips cleanly on machines without CUDA; `gpu_long` sweeps
run only under `-m gpu_long`."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    # A module names single parametrized cases for the long tier in GPU_LONG_CASES (test ids),
    # where marking a whole parameter would also drop its CPU cases.
    for item in items:
        if item.name in getattr(getattr(item, "module", None), "GPU_LONG_CASES", ()):
            item.add_marker(pytest.mark.gpu_long)
    if "gpu_long" not in (config.option.markexpr or ""):
        # The long GPU sweeps (tests/gpu/tiers.py) run only when `-m` names them.
        long = [item for item in items if "gpu_long" in item.keywords]
        if long:
            config.hook.pytest_deselected(items=long)
            items[:] = [item for item in items if "gpu_long" not in item.keywords]
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as an HF folder (made once from the PyPI GGUF, then cached)."""
    from runtime_service.sample_model import smollm2_folder

    return smollm2_folder()
