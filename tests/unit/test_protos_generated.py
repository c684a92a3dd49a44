"""The committed sdk/kiln/v1 code must be exactly what protos/generate.py makes from the protos."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("kiln_protos_generate", REPO / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_matches_a_fresh_generation(tmp_path):
    generator = _load_generator()
    fresh = generator.generate(tmp_path)
    committed_dir = REPO / "sdk" / "kiln" / "v1"
    assert fresh, "protoc produced nothing"
    for path in fresh:
        committed = committed_dir / path.name
        assert committed.is_file(), f"{path.name} is not committed; run python protos/generate.py"
        assert committed.read_text() == path.read_text(), (
            f"{path.name} differs from the protos; run python protos/generate.py")
    stale = {p.name for p in committed_dir.glob("*_pb2*.py*")} - {p.name for p in fresh}
    assert not stale, f"generated files without a proto: {sorted(stale)}"


def test_generated_imports_resolve_without_edits():
    from kiln.v1 import builder_pb2, builder_pb2_grpc, engine_pb2

    request = builder_pb2.BuildRequest(
        source="s3://bucket/model",
        settings=engine_pb2.BuildSettings(parallel=engine_pb2.ParallelSettings(tp_size=2)))
    assert builder_pb2.BuildRequest.FromString(request.SerializeToString()) == request
    assert hasattr(builder_pb2_grpc, "BuilderStub")
