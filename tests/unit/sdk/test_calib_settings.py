"""quant_config.calib_data in a build request: a local file goes by its absolute path to a builder
on this machine, is refused for a remote builder (it would be read as that machine's path), and
a missing one is refused before any service starts; s3:// URIs pass as written."""

from __future__ import annotations

import pytest

from kiln.engine_build import build_settings, local_calib_file
from kiln.errors import InvalidArgument
from kiln.model_config import ModelConfig
from kiln.quantization import QuantAlgo
from kiln.v1 import runtime_pb2

INFO = runtime_pb2.ServerInfo(device="cpu")


def awq_config(tmp_path, calib_data: str | None) -> ModelConfig:
    (tmp_path / "model").mkdir(exist_ok=True)
    config = ModelConfig(model_dir=str(tmp_path / "model"))
    config.quant_config.quant_algo = QuantAlgo.W4A16_AWQ
    config.quant_config.calib_data = calib_data
    return config


def test_a_relative_calibration_file_is_sent_by_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "calib.txt").write_text("text")
    monkeypatch.chdir(tmp_path)
    config = awq_config(tmp_path, "calib.txt")
    assert local_calib_file(config) == (tmp_path / "calib.txt").resolve()
    assert build_settings(config, INFO).quant.calib_data == str((tmp_path / "calib.txt").resolve())


def test_a_local_calibration_file_is_refused_for_a_remote_builder(tmp_path):
    (tmp_path / "calib.txt").write_text("text")
    config = awq_config(tmp_path, str(tmp_path / "calib.txt"))
    with pytest.raises(InvalidArgument, match="builder is remote: give it as an s3:// URI"):
        build_settings(config, INFO, local_builder=False)


def test_a_missing_calibration_file_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(InvalidArgument, match="calib_data .*missing.txt is not a file"):
        local_calib_file(awq_config(tmp_path, str(tmp_path / "missing.txt")))


@pytest.mark.parametrize("local_builder", [True, False])
def test_s3_calibration_data_and_the_default_corpus_pass_as_written(tmp_path, local_builder):
    uri = "s3://calib/texts/pydoc.jsonl"
    assert build_settings(awq_config(tmp_path, uri), INFO, local_builder).quant.calib_data == uri
    assert build_settings(awq_config(tmp_path, None), INFO, local_builder).quant.calib_data == ""
    assert local_calib_file(awq_config(tmp_path, uri)) is None
