"""STYLE's size rule, read from the source: no Python module of the project over 500 lines
(generated protobuf code aside). A module that grows past it is split by concept, as
kernels/quant_gemv.py, paged_attention.py, engine/executor.py and bench/bench_decode.py were."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = ("sdk", "runtime_service", "builder_service", "bench", "tests", "tools", "examples",
         "protos", "k8s")
MAX_LINES = 500


def _modules():
    for part in PARTS:
        for path in sorted((REPO / part).rglob("*.py")):
            if "_pb2" not in path.name and "__pycache__" not in path.parts:
                yield path


def test_no_module_is_over_500_lines():
    modules = list(_modules())
    assert len(modules) > 300                  # the walk found the project
    over = {str(path.relative_to(REPO)): lines for path in modules
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not over, f"split these by concept: {over}"
