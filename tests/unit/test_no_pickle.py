"""The project never unpickles: not in the stores, not on the engine-core pipe (whose messages
are written and read by runtime_service/engine/core_codec.py). multiprocessing is refused too:
its Connection.send/recv and its spawn start method pickle."""

from __future__ import annotations

import ast

from test_import_layers import all_modules, runtime_imports

REFUSED = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve",
           "multiprocessing", "copyreg", "joblib"}


def test_no_module_imports_a_pickler():
    offenders = []
    for module, path in sorted(all_modules().items()):
        for node in runtime_imports(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""])
            offenders += [f"{module} -> {name}" for name in names
                          if name.split(".")[0] in REFUSED]
    assert offenders == []


def test_torch_load_is_never_called():
    offenders = [name for name, path in all_modules().items()
                 if "torch.load(" in path.read_text()]
    assert offenders == []
