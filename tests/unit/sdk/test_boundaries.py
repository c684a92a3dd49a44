"""`import kiln` stays light and the import direction holds: kiln <- runtime_service <- builder_service."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def imported_roots(folder: Path) -> dict[str, set[str]]:
    found = {}
    for path in folder.rglob("*.py"):
        roots = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = roots
    return found


def test_import_kiln_does_not_import_torch_or_the_services():
    code = ("import sys, kiln, kiln.hlapi, kiln.cli, kiln.launch, kiln.quantization; "
            "bad = [m for m in ('torch', 'transformers', 'runtime_service', 'builder_service') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kiln_never_imports_the_services():
    offenders = {path: roots & {"runtime_service", "builder_service", "torch"}
                 for path, roots in imported_roots(REPO / "sdk" / "kiln").items()}
    assert not {p: r for p, r in offenders.items() if r}


def test_runtime_service_never_imports_builder_service():
    offenders = [path for path, roots in imported_roots(REPO / "runtime_service").items()
                 if "builder_service" in roots]
    assert not offenders
