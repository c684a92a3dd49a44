"""Calibration data: text or JSONL, local or s3://, its digest, and the held-out default."""

from __future__ import annotations

import json

import pytest

from builder_service import calibration
from builder_service.calibration import (CalibrationData, load_calibration, parse_texts,
                                         split_pydoc)
from runtime_service.errors import InvalidRequest
from runtime_service.store import S3Settings
from support.servers import BUCKET, start_s3, stop


class WordTokenizer:
    """One id per whitespace-separated word, in the shape of an HF tokenizer's output."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(word) for word in text.split()]}


def test_jsonl_gives_its_text_fields_and_other_files_their_whole_text():
    raw = b'{"text": "a b"}\n\n{"text": "c", "id": 3}\n'
    assert parse_texts(raw, "data.jsonl") == ("a b", "c")
    assert parse_texts(raw, "data.txt") == (raw.decode(),)


@pytest.mark.parametrize("raw, words", [(b'{"text": 1}', 'string field "text"'),
                                        (b"not json", "line 1 is not valid JSON"),
                                        (b'{"text": "a"}\n' + b"[" * 100000 + b"]" * 100000,
                                         "line 2 is not valid JSON: nested too deeply"),
                                        (b"\xff\xfe", "not UTF-8")])
def test_bad_calibration_files_are_invalid_requests_naming_the_line(raw, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_texts(raw, "data.jsonl")


def test_default_corpus_is_the_pydoc_topics_without_their_held_out_last_quarter():
    calibration, held_out = split_pydoc()
    assert 0.70 < len(calibration) / (len(calibration) + len(held_out)) < 0.80
    data = load_calibration()
    assert data.texts == (calibration,) and len(data.sha256) == 64
    assert held_out.strip() and held_out.strip()[:200] not in data.texts[0]
    assert (data.num_samples, data.seq_len) == (32, 512)


def test_windows_are_consecutive_and_at_most_the_requested_count():
    data = CalibrationData((" ".join(["xx"] * 50),), "0" * 64, num_samples=4, seq_len=8)
    assert data.windows(WordTokenizer()) == [[2] * 8] * 4
    short = CalibrationData(("a bb",), "0" * 64, num_samples=4, seq_len=8)
    assert short.windows(WordTokenizer()) == [[1, 2]]
    with pytest.raises(InvalidRequest, match="num_samples"):
        CalibrationData(("a",), "0" * 64, num_samples=0)


def test_only_the_text_the_windows_need_is_tokenized_and_the_windows_do_not_change():
    class Counting(WordTokenizer):
        seen = 0

        def __call__(self, text, add_special_tokens=False):
            Counting.seen = max(Counting.seen, len(text))
            return super().__call__(text, add_special_tokens)
    words = " ".join(f"w{'x' * (i % 7)}" for i in range(200_000))
    data = CalibrationData((words,), "0" * 64, num_samples=4, seq_len=16)
    whole = WordTokenizer()(words)["input_ids"][:64]
    assert sum(data.windows(Counting()), []) == whole
    assert Counting.seen < len(words) // 100
    with pytest.raises(InvalidRequest, match="at most 262144 tokens"):
        CalibrationData(("a",), "0" * 64, num_samples=1024, seq_len=1024)


def test_calibration_file_is_read_from_a_path_or_s3_with_the_same_digest(tmp_path,
                                                                          monkeypatch):
    lines = "\n".join(json.dumps({"text": f"line {i}"}) for i in range(3))
    local = tmp_path / "calib.jsonl"
    local.write_text(lines)
    server = start_s3(tmp_path / "s3")
    try:
        (tmp_path / "s3" / BUCKET / "sets").mkdir()
        (tmp_path / "s3" / BUCKET / "sets" / "calib.jsonl").write_text(lines)
        remote = load_calibration(f"s3://{BUCKET}/sets/calib.jsonl", 3, 16, server.settings)
        with pytest.raises(InvalidRequest, match="does not exist"):
            load_calibration(f"s3://{BUCKET}/sets/other.jsonl", 3, 16, server.settings)
        monkeypatch.setattr(calibration, "MAX_CALIB_BYTES", 32)   # sized before it is fetched
        with pytest.raises(InvalidRequest, match="larger than 32 bytes"):
            load_calibration(f"s3://{BUCKET}/sets/calib.jsonl", 3, 16, server.settings)
        monkeypatch.undo()
    finally:
        stop(server.process)
    here = load_calibration(str(local), 3, 16)
    assert remote == here and here.texts == ("line 0", "line 1", "line 2")
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_calibration(str(tmp_path / "missing.txt"))
    with pytest.raises(InvalidRequest, match="not a regular file"):
        load_calibration("/dev/zero")


def test_an_s3_calibration_key_is_read_exactly_as_written(tmp_path):
    server = start_s3(tmp_path / "s3")
    try:
        for key, text in [("data./calib.txt", "with the dot"), ("data/calib.txt", "without"),
                          ("v1.../c.txt", "with the dots"), ("v1/c.txt", "without")]:
            (tmp_path / "s3" / BUCKET / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "s3" / BUCKET / key).write_text(text)
        read = [load_calibration(f"s3://{BUCKET}/{key}", 1, 16, server.settings).texts
                for key in ("data./calib.txt", "v1.../c.txt")]
    finally:
        stop(server.process)
    assert read == [("with the dot",), ("with the dots",)]


@pytest.mark.parametrize("uri", ["s3://kiln/../../x.txt", "s3://kiln/data/../x.txt",
                                 "s3://kiln/a/./b.txt", "s3://kiln//x.txt", "s3://kiln/dir/",
                                 "s3://kiln/", "s3://kiln"])
def test_s3_calibration_keys_with_empty_or_dot_parts_are_refused_before_any_request(
        uri, monkeypatch):
    def no_store(*args, **kwargs):
        raise AssertionError("a refused key must not open a store")
    monkeypatch.setattr(calibration, "open_store", no_store)
    with pytest.raises(InvalidRequest, match="must be s3://bucket/key"):
        load_calibration(uri, 1, 16, S3Settings(endpoint="127.0.0.1:9"))


@pytest.mark.parametrize("uri", ["s3://Bad_Bucket!!/x.txt", "s3://ab/x.txt", "s3://KILN/x.txt"])
def test_an_invalid_s3_calibration_bucket_is_an_invalid_request_not_an_outage(uri):
    with pytest.raises(InvalidRequest, match="bucket name"):
        load_calibration(uri, 1, 16, S3Settings(endpoint="127.0.0.1:9"))
