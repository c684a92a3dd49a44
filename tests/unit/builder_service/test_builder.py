import io
import threading

import pytest

from builder_service import builder as builder_module
from builder_service.builder import EngineBuilder
from builder_service.pipeline import BuildProgress
from builder_service.progress import ProgressPrinter
from builder_service.settings import BuildSpec
from builder_service.sources import SourceResolver
from runtime_service.format.engine_config import Mapping
from runtime_service.errors import EngineNotFound
from runtime_service.store import LocalStore


@pytest.fixture
def builder(tmp_path):
    work = tmp_path / "work"
    return EngineBuilder(LocalStore(tmp_path / "store"), SourceResolver(work, None), work)


def spec(source, **kw):
    return BuildSpec(source=str(source), dtype="float32", mapping=Mapping(kw.pop("tp", 1)), **kw)


def test_second_build_is_a_cache_hit_that_builds_nothing(builder, tiny_hf):
    first = builder.build(spec(tiny_hf, name="tiny"))
    stages = []
    second = builder.build(spec(tiny_hf), lambda p: stages.append(p.stage))
    assert not first.cached and second.cached
    assert second.engine.engine_key == first.engine.engine_key
    assert "convert" not in stages and "publish" not in stages
    assert builder.describe("tiny").engine_key == first.engine.engine_key


def test_concurrent_identical_builds_produce_one_engine(builder, tiny_hf, monkeypatch):
    calls = []
    real = builder_module.build_engine_folder
    gate = threading.Event()

    def slow_build(*args, **kwargs):
        calls.append(1)
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(builder_module, "build_engine_folder", slow_build)
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(builder.build(spec(tiny_hf, tp=2))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(200):
        if calls:
            break
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(30)
    assert len(calls) == 1
    assert len({o.engine.engine_key for o in outcomes}) == 1 and len(outcomes) == 3
    assert sorted(o.cached for o in outcomes) == [False, True, True]
    assert len(builder.store.list_engine_keys()) == 1


def test_a_build_interrupted_during_publish_is_completed_without_reconverting(
        builder, tiny_hf, monkeypatch):
    def die_after_first_file(self, key, path, sha256=None):
        monkeypatch.undo()
        raise KeyboardInterrupt("killed mid-publish")

    monkeypatch.setattr(LocalStore, "put_file", die_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        builder.build(spec(tiny_hf))
    assert builder.store.list_engine_keys() == []
    stages = []
    outcome = builder.build(spec(tiny_hf), lambda p: stages.append(p.stage))
    assert not outcome.cached and "publish" in stages and "convert" not in stages
    assert builder.store.list_engine_keys() == [outcome.engine.engine_key]


def test_list_and_delete(builder, tiny_hf):
    a = builder.build(spec(tiny_hf, name="a")).engine.engine_key
    b = builder.build(spec(tiny_hf, tp=2)).engine.engine_key
    assert {e.engine_key for e in builder.list_engines()} == {a, b}
    assert builder.delete("a") == a
    assert [e.engine_key for e in builder.list_engines()] == [b]
    with pytest.raises(EngineNotFound):
        builder.describe("a")
    with pytest.raises(EngineNotFound):
        builder.delete(a)


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise():
    events = [BuildProgress("convert", i, 20, "layers", "x") for i in range(21)]
    plain = io.StringIO()
    printer = ProgressPrinter(plain, tty=False)
    for event in events:
        printer(event)
    lines = plain.getvalue().splitlines()
    assert 2 <= len(lines) <= 11 and all(line.startswith("kiln-build ") for line in lines)
    assert "\r" not in plain.getvalue()
    tty = io.StringIO()
    printer = ProgressPrinter(tty, tty=True)
    for event in events:
        printer(event)
    printer(BuildProgress("publish", 3 << 20, 3 << 20, "bytes", "rank0.safetensors"))
    printer.finish()
    drawn = tty.getvalue()
    assert "\r" in drawn and "kiln-build" not in drawn          # a redrawn tqdm bar, not lines
    assert "convert" in drawn and "20/20" in drawn and "100%" in drawn
    assert "3.00M" in drawn                                     # bytes are scaled (MiB)
