"""The rule programmatic dependent launch rests on (kernels/pdl.py), read from the source: every
Kiln Triton kernel waits for the kernel ahead of it before anything else, and every launch
passes the PDL launch options. A kernel launched with the attribute but without the wait would
read its inputs while they are still being written. Needs neither Triton nor a GPU."""

from __future__ import annotations

import ast
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[4] / "runtime_service" / "model" / "kernels"


def _modules():
    for path in sorted(KERNELS.glob("*.py")):
        yield path.name, ast.parse(path.read_text())


def _is_jit(node: ast.FunctionDef) -> bool:
    return any("triton.jit" in ast.unparse(d) for d in node.decorator_list)


def _entry_kernels(tree):
    """Launched kernels: jit functions launched as `name[grid](...)` or through grid_launcher
    anywhere in the package (helpers called inside kernels are not launched)."""
    return [node for node in tree.body if isinstance(node, ast.FunctionDef) and _is_jit(node)
            and node.name.endswith("_kernel") and node.name != "await_previous_kernel"]


def _launched_names() -> set[str]:
    names = set()
    for _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript) \
                    and isinstance(node.func.value, ast.Name):
                names.add(node.func.value.id)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "grid_launcher" and isinstance(node.args[0], ast.Name):
                names.add(node.args[0].id)
    return names


def test_every_launched_kernel_waits_for_the_one_ahead_first():
    kernels = {node.name: (module, node) for module, tree in _modules()
               for node in _entry_kernels(tree)}
    assert len(kernels) >= 20
    assert _launched_names() - {"grid"} <= set(kernels)       # no launch of anything else
    for name, (module, node) in kernels.items():
        body = node.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]                                  # the docstring
        assert ast.unparse(body[0]) == "pdl.await_previous_kernel()", f"{module}: {name}"


def test_every_launch_passes_the_pdl_launch_options():
    launches = 0
    for module, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript) \
                    and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id.endswith("_kernel"):
                launches += 1
                unpacked = [ast.unparse(k.value) for k in node.keywords if k.arg is None]
                assert "pdl.LAUNCH" in unpacked, f"{module}: {ast.unparse(node.func)}"
    assert launches >= 13
    launcher = next(node for _, tree in _modules() for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "grid_launcher")
    partials = [node for node in ast.walk(launcher) if isinstance(node, ast.Call)
                and ast.unparse(node.func) == "functools.partial"]
    assert len(partials) == 2 and all(
        "pdl.LAUNCH" in [ast.unparse(k.value) for k in call.keywords if k.arg is None]
        for call in partials)
    assert not any(isinstance(node, ast.Return) and "partial" not in ast.unparse(node)
                   for node in ast.walk(launcher))

