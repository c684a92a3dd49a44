"""How programmatic dependent launch is switched (kernels/pdl.py): on from sm_90 unless
KILN_PDL says otherwise, never under Triton's interpreter; the next kernel launched as this
one's programs exit unless KILN_PDL_TRIGGER=start; both handed to the compile workers as this
process resolved them, so a worker neither opens the GPU nor compiles kernels under another key
than the process that waits for them."""

from __future__ import annotations

import logging
import subprocess

import pytest

pytest.importorskip("triton")

from runtime_service.model.kernels import compile_pool, pdl  # noqa: E402


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(pdl.ENV, raising=False)
    monkeypatch.delenv(pdl.TRIGGER_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return monkeypatch


@pytest.mark.parametrize("hopper", [True, False])
@pytest.mark.parametrize("setting", [None, "auto", ""])
def test_auto_follows_the_gpu(clean_env, hopper, setting):
    clean_env.setattr(pdl, "_hopper_or_newer", lambda: hopper)
    if setting is not None:
        clean_env.setenv(pdl.ENV, setting)
    assert pdl._enabled() is hopper


@pytest.mark.parametrize("hopper", [True, False])
def test_zero_and_one_overrule_the_gpu(clean_env, hopper):
    clean_env.setattr(pdl, "_hopper_or_newer", lambda: hopper)
    clean_env.setenv(pdl.ENV, "0")
    assert pdl._enabled() is False
    clean_env.setenv(pdl.ENV, "1")
    assert pdl._enabled() is True


def test_an_unknown_setting_is_named_and_taken_as_auto(clean_env, caplog):
    clean_env.setattr(pdl, "_hopper_or_newer", lambda: True)
    clean_env.setenv(pdl.ENV, "yes")
    with caplog.at_level(logging.WARNING, logger="kiln.kernels"):
        assert pdl._enabled() is True
    assert "'yes' is not 0, 1 or auto" in caplog.text


def test_the_interpreter_never_takes_it(clean_env):
    clean_env.setattr(pdl, "_hopper_or_newer", lambda: True)
    clean_env.setenv(pdl.ENV, "1")
    clean_env.setattr(pdl, "INTERPRETED", True)     # TRITON_INTERPRET=1, read at import
    assert pdl._enabled() is False


@pytest.mark.parametrize("setting, trigger", [(None, "exit"), ("", "exit"), ("exit", "exit"),
                                              ("start", "start")])
def test_the_trigger_is_exit_unless_start_is_asked(clean_env, setting, trigger):
    if setting is not None:
        clean_env.setenv(pdl.TRIGGER_ENV, setting)
    assert pdl._trigger() == trigger


def test_an_unknown_trigger_is_named_and_taken_as_exit(clean_env, caplog):
    clean_env.setenv(pdl.TRIGGER_ENV, "early")
    with caplog.at_level(logging.WARNING, logger="kiln.kernels"):
        assert pdl._trigger() == "exit"
    assert "'early' is not exit or start" in caplog.text


@pytest.mark.parametrize("enabled, trigger", [(True, "exit"), (True, "start"), (False, "exit")])
def test_the_compile_workers_get_this_processs_resolved_setting(clean_env, enabled, trigger):
    clean_env.setenv(pdl.ENV, "auto")
    clean_env.setenv(pdl.TRIGGER_ENV, "bogus")
    clean_env.setattr(pdl, "ENABLED", enabled)
    clean_env.setattr(pdl, "TRIGGER", trigger)
    seen = {}

    class Recorded(Exception):
        pass

    def popen(argv, **kwargs):
        seen.update(kwargs["env"])
        raise Recorded

    clean_env.setattr(subprocess, "Popen", popen)
    with pytest.raises(Recorded):
        compile_pool.CompilePool(1).start()
    assert seen[pdl.ENV] == ("1" if enabled else "0")
    assert seen[pdl.TRIGGER_ENV] == trigger
