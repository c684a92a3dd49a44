"""The import rules of the whole project, read from the source (no imports run).

- No import cycles between modules anywhere in kiln, runtime_service or builder_service, counting
  imports inside functions too (a lazy import hides a cycle, it does not break it). Imports under
  `if TYPE_CHECKING:` are annotations only and do not count.
- runtime_service's subpackages keep a one-way order: server -> distributed -> engine -> model,
  and inside model: the model files -> layers -> kernels. store and format depend on none of
  engine, model, distributed or server.
- engine/ is pure Python except the executor (it owns the step loop and the model runner) and
  beam search, which ranks the model's log-prob rows as tensors.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"kiln": REPO / "sdk" / "kiln", "runtime_service": REPO / "runtime_service",
         "builder_service": REPO / "builder_service"}

# What each part of runtime_service may import from the others ("" is a top-level module such
# as errors.py). Anything not listed is refused.
ALLOWED = {
    "errors": set(),
    "format": {"errors"},
    "store": {"errors", "format"},
    "model.kernels": {"errors"},
    "model.parallel": {"errors"},
    "model.layers": {"errors", "format", "model.kernels", "model.parallel"},
    "model": {"errors", "format", "model.layers", "model.kernels", "model.parallel"},
    "engine": {"errors", "format", "model", "model.layers", "model.kernels"},
    "distributed": {"errors", "format", "store", "engine", "model", "model.parallel"},
    "server": {"errors", "format", "store", "engine", "model", "distributed"},
}
# The executor owns the model runner; beam search ranks the log-prob rows the model returns, as
# tensors (topk over the vocabulary), and its beam group gathers them.
TORCH_FREE_ENGINE_EXCEPT = {"executor", "beam_search", "beam_group"}


def module_name(path: Path) -> str:
    for root, folder in ROOTS.items():
        if folder in path.parents or path.parent == folder:
            parts = [root, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in ROOTS.values() for p in folder.rglob("*.py")
            if "v1" not in p.relative_to(folder).parts}


def runtime_imports(tree: ast.AST):
    """Every import node outside `if TYPE_CHECKING:` blocks, at any depth."""
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (n for part in child.orelse for n in walk_node(part))
                continue
            yield from walk_node(child)

    def walk_node(node):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from walk(node)

    yield from walk(tree)


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def part_of(module: str) -> str | None:
    """The runtime_service part a module belongs to, as named in ALLOWED."""
    parts = module.split(".")
    if parts[0] != "runtime_service" or len(parts) < 2:
        return None
    if parts[1] == "model" and len(parts) > 2 and parts[2] in ("layers", "kernels", "parallel"):
        return f"model.{parts[2]}"
    if (REPO / "runtime_service" / parts[1]).is_dir():
        return parts[1]
    return "errors" if parts[1] == "errors" else ""


def test_the_project_has_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_a_planted_cycle_is_found():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_runtime_parts_import_only_what_lies_below_them():
    offenders = []
    for module, targets in import_graph().items():
        source = part_of(module)
        if not source:             # top-level entry points (__main__, sample_model) may use any
            continue
        for target in targets:
            dest = part_of(target)
            if dest is None or dest == source:
                continue
            if dest not in ALLOWED[source]:
                offenders.append(f"{module} -> {target}")
    assert offenders == []


@pytest.mark.parametrize("path", sorted((REPO / "runtime_service" / "engine").glob("*.py")),
                         ids=lambda p: p.name)
def test_engine_modules_are_pure_python_except_the_executor_and_beams(path):
    if path.stem in TORCH_FREE_ENGINE_EXCEPT:
        return
    roots = set()
    for node in runtime_imports(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        roots |= {n.split(".")[0] for n in names}
    assert not roots & {"torch", "triton", "numpy"}


def test_every_runtime_module_belongs_to_a_known_part():
    unknown = {m for m in all_modules() if part_of(m) not in (None, "", *ALLOWED)}
    assert unknown == set()
