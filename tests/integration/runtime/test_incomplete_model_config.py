"""An HF folder whose config.json lacks a required field is INVALID_ARGUMENT, through
LoadEngine and through `serve --engine` (one `kiln-runtime: error:` line, no traceback)
(issue 15, defect 6: INTERNAL and a traceback before)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from runtime_service.errors import InvalidRequest
from runtime_service.format.model_config import REQUIRED_HF_FIELDS, ModelArgs
from runtime_service.server.engine_host import EngineHost, RuntimeSettings, State
from runtime_service.server.rpc_errors import status_of
from runtime_service.server.serve import main as serve_main
from support.tiny_llama import TINY, make_tiny_llama


@pytest.mark.parametrize("field", REQUIRED_HF_FIELDS)
def test_a_config_without_a_required_field_is_invalid(field):
    config = {**TINY, "model_type": "llama", field: None}
    with pytest.raises(InvalidRequest, match=field):
        ModelArgs.from_hf_config(config)
    with pytest.raises(InvalidRequest, match=field):
        ModelArgs.from_hf_config({**config, field: 0})


@pytest.fixture(scope="module")
def incomplete_model(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("incomplete") / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_serve_engine_on_it_prints_one_error_line_and_exits_2(incomplete_model, tmp_path,
                                                              capsys, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "kernels"))   # restored after
    code = serve_main(["--engine", str(incomplete_model), "--listen", "127.0.0.1:0",
                       "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "kiln-runtime: error: INVALID_ARGUMENT: config.json lacks" in err
    assert "Traceback" not in err


def test_load_engine_on_it_is_invalid_argument(incomplete_model, tmp_path):
    host = EngineHost(RuntimeSettings(cache_dir=tmp_path / "cache", allow_load_engine=True))
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(host.load(str(incomplete_model)))
    code, message = status_of(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "hidden_size" in message
    assert host.state is State.EMPTY
