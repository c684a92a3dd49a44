"""The tuning cache: per engine and GPU model, local first, then the store beside the engine;
other software's or damaged files are never used, and the store's copy is never overwritten."""

import json

import pytest

from runtime_service.server.startup_cache import FORMAT, TuningCache, engine_id_for, gpu_file_name
from runtime_service.store import LocalStore

KEY = "ab" * 32
RECORDS = [{"dtype": "bfloat16", "rows": 1, "n": 4096, "k": 4096, "gated": False,
            "config": {"kind": "fma", "block_n": 8, "block_k": 512, "num_warps": 4,
                       "num_stages": 1, "split_k": 2}}]


def cache(tmp_path, gpu="NVIDIA H200 sm90", software="gemv-1 torch-2.11 triton-3.6", store=None):
    return TuningCache(tmp_path / "pod", KEY, gpu, software, store)


def test_saved_records_come_back_from_the_local_cache(tmp_path):
    cache(tmp_path).save(RECORDS)
    assert cache(tmp_path).load() == (RECORDS, "local")
    assert cache(tmp_path).path == tmp_path / "pod" / "startup" / KEY / "nvidia-h200-sm90.json"


def test_nothing_cached_is_an_empty_load(tmp_path):
    assert cache(tmp_path).load() == ([], "")


def test_another_gpu_model_or_software_tunes_again(tmp_path):
    cache(tmp_path).save(RECORDS)
    assert cache(tmp_path, gpu="NVIDIA H100 80GB HBM3 sm90").load() == ([], "")
    assert cache(tmp_path, software="gemv-1 torch-2.12 triton-3.6").load() == ([], "")


@pytest.mark.parametrize("content", [b"not json", b"[]", json.dumps({"format": "other"}).encode(),
                                     b"[" * 100000 + b"]" * 100000,
                                     json.dumps({"format": FORMAT, "engine_id": KEY,
                                                 "gpu_model": "NVIDIA H200 sm90",
                                                 "software": "gemv-1 torch-2.11 triton-3.6",
                                                 "gemv": "x"}).encode()])
def test_a_damaged_file_is_ignored(tmp_path, content):
    target = cache(tmp_path)
    target.path.parent.mkdir(parents=True)
    target.path.write_bytes(content)
    assert target.load() == ([], "")


def test_a_second_pod_takes_the_stores_copy_and_keeps_it_locally(tmp_path):
    store = LocalStore(tmp_path / "engine")
    cache(tmp_path / "first", store=store).save(RECORDS)
    assert (tmp_path / "engine" / "startup" / "nvidia-h200-sm90.json").is_file()
    second = cache(tmp_path / "second", store=store)
    assert second.load() == (RECORDS, "store")
    assert second.path.is_file()
    assert cache(tmp_path / "second").load() == (RECORDS, "local")


def test_the_stores_copy_is_never_overwritten(tmp_path):
    store = LocalStore(tmp_path / "engine")
    cache(tmp_path / "first", store=store).save(RECORDS)
    cache(tmp_path / "second", store=store).save([])
    assert cache(tmp_path / "third", store=store).load() == (RECORDS, "store")


def test_an_unreadable_store_falls_back_to_tuning(tmp_path):
    class Broken:
        def read_bytes(self, key):
            raise OSError("store unreachable")

    assert cache(tmp_path, store=Broken()).load() == ([], "")


def test_names_are_checked():
    assert gpu_file_name("NVIDIA H100 80GB HBM3 sm90") == "nvidia-h100-80gb-hbm3-sm90.json"
    with pytest.raises(ValueError, match="gpu_model"):
        gpu_file_name("  ")
    with pytest.raises(ValueError, match="engine_id"):
        TuningCache("/tmp", "../escape", "NVIDIA H200", "x")


def test_a_folder_without_engine_key_gets_a_path_digest(tmp_path):
    assert engine_id_for(tmp_path, KEY) == KEY
    derived = engine_id_for(tmp_path, "")
    assert derived.startswith("path-") and derived == engine_id_for(tmp_path / ".", "")
    assert derived != engine_id_for(tmp_path / "other", "")

