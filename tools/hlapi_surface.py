"""Prints tensorrt_llm.hlapi's public surface at f430a4b beside Kiln's, from the table in
tools/hlapi_surface_table.py, and checks it: each name must exist at the same path under kiln
(unless refused as not provided), with the peer's positional parameters in the peer's order.
"same" is earned only when the defaults match too. Exits 1 on any mismatch.

    python tools/hlapi_surface.py [--markdown]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import importlib
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hlapi_surface_table import TABLE  # noqa: E402

MISSING = object()


def resolve(module: str, dotted: str):
    """kiln.<module>'s object for `dotted`, else MISSING. A dataclass field counts (it is not a
    class attribute under slots): its default, or a fresh one from its factory."""
    obj = importlib.import_module(f"kiln.{module}")
    for part in dotted.split("."):
        found = getattr(obj, part, MISSING)
        fields = getattr(obj, "__dataclass_fields__", {}) if inspect.isclass(obj) else {}
        if part in fields:
            spec = fields[part]
            found = spec.default_factory() if spec.default_factory is not dataclasses.MISSING \
                else spec.default
        if found is MISSING:
            return MISSING
        obj = found
    return obj


def peer_parameters(signature: str) -> list[tuple[str, str | None]]:
    """(name, default source or None) of each plain parameter before any * or **."""
    args = ast.parse(f"def f{signature}: pass").body[0].args
    plain = args.posonlyargs + args.args
    defaults = [None] * (len(plain) - len(args.defaults)) + [ast.unparse(d) for d in args.defaults]
    return [(a.arg, d) for a, d in zip(plain, defaults) if a.arg != "self"]


def kiln_parameters(obj) -> list[tuple[str, str | None]]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    out = []
    for p in signature.parameters.values():
        if p.name == "self" or p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        default = None if p.default is p.empty else (
            "..." if not isinstance(p.default, (int, float, str, bool, type(None)))
            else repr(p.default))
        out.append((p.name, default))
    return out


def check(module, name, signature, status):
    """(status, problem): the status Kiln earns, or a problem string."""
    obj = resolve(module, name)
    if obj is MISSING:
        return status, ("" if status == "refused" else "absent from kiln")
    if signature.startswith("enum:"):
        members = set(signature[5:].split(","))
        have = {m.name for m in obj} if inspect.isclass(obj) and issubclass(obj, enum.Enum) \
            else set()
        missing = members - have
        return status, (f"members missing: {', '.join(sorted(missing))}" if missing else "")
    if not signature:
        return status, ""
    peer = peer_parameters(signature)
    mine = kiln_parameters(obj)
    names = [n for n, _ in mine[:len(peer)]]
    if names != [n for n, _ in peer]:
        return status, f"positional order differs: kiln has {[n for n, _ in mine]}"
    same_defaults = all(d == "..." or d == kd for (_, d), (_, kd) in zip(peer, mine))
    if status == "same" and not same_defaults:
        return "implemented", ""
    return status, ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    problems = 0
    words = {"same": "same", "implemented": "implemented", "warn": "accepted with a warning",
             "refused": "refused"}
    rows = []
    for module, name, signature, status, note in TABLE:
        earned, problem = check(module, name, signature, status)
        problems += bool(problem)
        label = f"MISMATCH: {problem}" if problem else words[earned]
        rows.append((f"tensorrt_llm.{module}.{name}", signature or "-", label, note))
    if args.markdown:
        print("| peer name | peer signature | Kiln | note |\n|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    else:
        for path, signature, label, note in rows:
            shown = "" if signature == "-" else (
                f" [{signature}]" if signature.startswith("enum:") else signature)
            print(f"{path}{shown}\n    -> {label}"
                  f"{'  (' + note + ')' if note else ''}")
    counts = {w: sum(r[2] == w for r in rows) for w in words.values()}
    print(f"\n{len(rows)} names: " + ", ".join(f"{n} {w}" for w, n in counts.items())
          + f", {problems} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
