"""`kiln build --warm-startup-cache`: the build Job starts the new engine once as a pod would
(engine-core process, sharing its start-up cache through the store), on a GPU only, and leaves
this process's environment and work folder as they were."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder_service import cli, warm_start
from builder_service.status import exit_code_for
from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.server import core_client, kernel_cache


def test_warming_needs_a_gpu(monkeypatch, tmp_path):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FailedPrecondition, match="CUDA GPU"):
        warm_start.warm_startup_cache("file:///store/engines/abc", tmp_path)


def test_the_engine_starts_once_as_a_sharing_pod_in_a_fresh_kernel_folder(monkeypatch,
                                                                            tmp_path):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(kernel_cache.ENV, "/var/cache/someone-elses-kernels")
    seen = {}

    def start_core_process(uri, settings, pod_age_s=0.0):
        seen.update(uri=uri, settings=settings, kernels=os.environ[kernel_cache.ENV])
        assert Path(seen["kernels"]).is_relative_to(settings.cache_dir)
        assert settings.cache_dir.is_dir() and settings.cache_dir.parent == tmp_path / "work"
        report = SimpleNamespace(log_line=lambda: "startup total_s=1.0")
        return SimpleNamespace(executor=SimpleNamespace(
            shutdown=lambda: seen.setdefault("stopped", True)), report=report)

    monkeypatch.setattr(core_client, "start_core_process", start_core_process)
    report = warm_start.warm_startup_cache("s3://kiln/engines/abc", tmp_path / "work")
    assert report.log_line() == "startup total_s=1.0"
    assert seen["uri"] == "s3://kiln/engines/abc" and seen["stopped"]
    assert seen["settings"].share_startup_cache and seen["settings"].executor.device == "cuda"
    assert os.environ[kernel_cache.ENV] == "/var/cache/someone-elses-kernels"   # restored
    assert list((tmp_path / "work").iterdir()) == []                          # cleaned up


def test_warming_is_refused_with_a_remote_builder(capsys):
    code = cli.main(["build", "--model", "/models/x", "--builder", "127.0.0.1:1",
                     "--warm-startup-cache"])
    assert code == exit_code_for(InvalidRequest(""))
    assert "use it with --store" in capsys.readouterr().err
