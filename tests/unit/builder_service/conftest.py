import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from support.tiny_llama import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """A 2-layer random LLaMA in HF layout with a tokenizer; read-only for tests."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "hf")
