"""A start loads the tokenizer beside its other work: the loader's result or its error reaches
whoever takes it, the loader runs once on a thread of its own, the executor takes the one it is
given (when it starts, not while it is built), and the pod takes the one the engine core's
FETCHED message named."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from concurrent.futures import Future

import pytest

from runtime_service.engine import core_codec as codec
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine import tokenizer_load
from runtime_service.engine.tokenizer_load import load_in_background
from runtime_service.errors import InvalidRequest
from runtime_service.model.loader import load_model
from runtime_service.server.core_client import wait_for_start
from runtime_service.server.core_pipe import FramedSocket
from support.tiny_llama import make_tiny_llama


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny"))


def test_the_background_load_gives_the_tokenizer_or_its_error(folder, tmp_path):
    tokenizer = load_in_background(folder).result(60)
    assert tokenizer("w3 w7")["input_ids"] == [3, 7]
    assert load_in_background(None).result(60) is None
    with pytest.raises(InvalidRequest, match="nothing-here"):
        load_in_background(tmp_path / "nothing-here").result(60)


@pytest.mark.parametrize("file, content, words", [
    ("tokenizer_config.json", b"[" * 100000 + b"]" * 100000, "RecursionError"),
    ("tokenizer_config.json", b"[]", "AttributeError"),
    ("tokenizer_config.json", json.dumps({"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}
                                         ).encode(), "custom code"),
    ("tokenizer.json", b"\x00\x01", "JSONDecodeError"),
])
def test_tokenizer_files_transformers_cannot_read_are_an_invalid_request(folder, tmp_path, file,
                                                                         content, words):
    """The files come with the model, from whoever made it; remote code is never run."""
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / file).write_bytes(content)
    with pytest.raises(InvalidRequest, match=f"cannot load the tokenizer in {bad}: .*{words}"):
        tokenizer_load.load_tokenizer(bad)


def test_the_load_runs_the_loader_it_is_given_once_on_a_thread(folder):
    """The engine core hands its decoder's loader (engine_start.py); it runs once, however often
    its result is asked for, and not on the caller's thread."""
    calls = []
    release = threading.Event()

    def load(where):
        calls.append((where, threading.current_thread().name))
        release.wait(60)
        return f"decoder of {where}"

    loading = load_in_background(folder, load)
    release.set()
    assert loading.result(60) == f"decoder of {folder}" and loading.result(60) == loading.result(60)
    assert calls == [(folder, "kiln-tokenizer-load")]


def test_the_executor_takes_the_tokenizer_it_is_given(folder):
    given: Future = Future()
    given.set_result(sentinel := object())
    executor = Executor(load_model(folder), ExecutorOptions(), tokenizer_load=given)
    assert executor.tokenizer is sentinel
    assert Executor(load_model(folder), ExecutorOptions()).tokenizer("w5")["input_ids"] == [5]
    off = Executor(load_model(folder), ExecutorOptions(load_tokenizer=False), tokenizer_load=given)
    assert off.tokenizer is None


def test_the_executor_is_built_while_its_tokenizer_still_loads(folder):
    """The constructor (KV cache, graph capture) does not wait for the load; the executor
    takes the tokenizer when it starts, and a failed load fails the start, before any step."""
    loading: Future = Future()
    executor = Executor(load_model(folder), ExecutorOptions(), tokenizer_load=loading)
    loading.set_result(sentinel := object())
    assert executor.tokenizer is sentinel and executor.tokenizer is sentinel
    failing: Future = Future()
    broken = Executor(load_model(folder), ExecutorOptions(), tokenizer_load=failing)
    failing.set_exception(OSError("tokenizer.json: no such file"))
    with pytest.raises(OSError, match="tokenizer.json"):
        broken.start()
    assert broken._thread is None                       # no step loop was started


def test_the_pod_loads_its_tokenizer_once_the_core_says_fetched(folder):
    ours, theirs = socket.socketpair()
    pod, core = FramedSocket(ours), FramedSocket(theirs)
    core.send(codec.FETCHED, codec.dumps({"tokenizer_dir": str(folder)}))
    core.send(codec.STARTED, codec.dumps({"folder": str(folder)}))
    kind, body, tokenizer_load = wait_for_start(pod)
    assert kind == codec.STARTED and codec.loads(body) == {"folder": str(folder)}
    assert tokenizer_load.result(60)("w9")["input_ids"] == [9]
    core.send(codec.START_FAILED, codec.dumps(["CorruptEngine", "bad sha"]))
    assert wait_for_start(pod) == (codec.START_FAILED, codec.dumps(["CorruptEngine", "bad sha"]),
                                   None)
    pod.close()
    core.close()


_IMPORT_CHECK = r"""
import sys, threading
from runtime_service.engine.tokenizer_load import import_in_background
if sys.argv[1] == "broken":
    sys.modules["transformers"] = None          # any import of it now raises ImportError
assert "transformers" not in sys.modules or sys.argv[1] == "broken"
import_in_background()
for thread in threading.enumerate():
    if thread.name == "kiln-tokenizer-import":
        thread.join(120)
print(sys.modules.get("transformers") is not None)
"""


@pytest.mark.parametrize("case, imported", [("fine", "True"), ("broken", "False")])
def test_the_pod_imports_the_tokenizer_classes_beside_the_core_start(case, imported):
    """start_core_process begins the import before it spawns the core, so the load after
    FETCHED finds it done (bench/NOTES.md, run 24d); an import that fails is left to the load,
    which reports it, and raises nothing on the thread."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, case], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == imported
    assert "Traceback" not in done.stderr
