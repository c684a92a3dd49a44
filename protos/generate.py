"""Regenerates the Python code of the kiln.v1 protos into sdk/kiln/v1/.

`-I protos` makes protoc write `from kiln.v1 import engine_pb2`, which resolves to the SDK package
unedited. The generated files are committed; tests/unit/test_protos_generated.py regenerates them
into a temporary folder and fails on any difference, so a proto edit without a rerun is caught.

Usage: python protos/generate.py [--out DIR]   (DIR defaults to sdk/)
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
PACKAGE_DIR = Path("kiln") / "v1"
INIT_TEXT = '"""Generated gRPC code of the kiln.v1 protos (protos/generate.py writes it)."""\n'
# protoc stamps its own grpcio version into *_pb2_grpc.py and the stub refuses to import under an
# older grpcio. The stubs use nothing newer than requirements.txt's floor, and the GPU machine
# runs grpcio 1.84 while the development machine generates with 1.85, so the stamp is lowered to
# that floor. Only this one assignment is rewritten; everything else is protoc's output.
MIN_GRPC_VERSION = "1.66.0"
_STAMP = re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py under out_root/kiln/v1/; returns them."""
    out_root = Path(out_root)
    target = out_root / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
            f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", *sources]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {sources}")
    for stub in target.glob("*_pb2_grpc.py"):
        text = stub.read_text()
        stub.write_text(_STAMP.sub(f"GRPC_GENERATED_VERSION = '{MIN_GRPC_VERSION}'", text))
    init = target / "__init__.py"
    if not init.exists():
        init.write_text(INIT_TEXT)
    return sorted(p for p in target.iterdir() if p.suffix in (".py", ".pyi"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "sdk")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
