import hashlib

import pytest

from builder_service.uploads import (EMPTY_SHA256, SourceFileEntry, UploadArea, UploadLimits,
                                     check_file_list)
from runtime_service.errors import CapacityExceeded, InvalidRequest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(area, data: bytes, chunk=3):
    writer = area.new_blob(sha(data), len(data))
    for offset in range(0, len(data), chunk):
        writer.write(offset, data[offset:offset + chunk])
    writer.finish()


def test_assembled_source_holds_the_uploaded_files(tmp_path):
    area = UploadArea(tmp_path)
    files = [SourceFileEntry("config.json", sha(b"{}"), 2),
             SourceFileEntry("tokenizer/vocab.json", sha(b"[1,2]"), 5),
             SourceFileEntry("empty.json", EMPTY_SHA256, 0)]
    assert area.missing([f.sha256 for f in files]) == [sha(b"{}"), sha(b"[1,2]")]
    put(area, b"{}")
    put(area, b"[1,2]")
    assert area.missing([f.sha256 for f in files]) == []
    folder = area.source_folder(area.assemble(files))
    assert (folder / "tokenizer" / "vocab.json").read_bytes() == b"[1,2]"
    assert (folder / "empty.json").read_bytes() == b""
    assert area.assemble(list(reversed(files))) == folder.name


def test_a_blob_that_does_not_match_its_sha256_never_becomes_visible(tmp_path):
    area = UploadArea(tmp_path)
    writer = area.new_blob(sha(b"right"), 5)
    writer.write(0, b"wrong")
    with pytest.raises(InvalidRequest, match="sha256"):
        writer.finish()
    assert area.missing([sha(b"right")]) == [sha(b"right")]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_out_of_order_and_oversized_chunks_are_refused(tmp_path):
    area = UploadArea(tmp_path)
    writer = area.new_blob(sha(b"abcdef"), 6)
    with pytest.raises(InvalidRequest, match="offset"):
        writer.write(3, b"def")
    with pytest.raises(InvalidRequest, match="longer"):
        writer.write(0, b"abcdefg")
    writer.abandon()


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a//b", ""])
def test_unsafe_paths_are_refused(path):
    with pytest.raises(InvalidRequest):
        check_file_list([SourceFileEntry(path, "0" * 64, 1)], UploadLimits())


def test_size_and_count_caps(tmp_path):
    limits = UploadLimits(max_total_bytes=10, max_files=2)
    with pytest.raises(CapacityExceeded):
        check_file_list([SourceFileEntry("a", "0" * 64, 11)], limits)
    with pytest.raises(CapacityExceeded):
        check_file_list([SourceFileEntry(c, "0" * 64, 1) for c in "abc"], limits)


def test_assembling_with_a_missing_blob_is_refused(tmp_path):
    area = UploadArea(tmp_path)
    with pytest.raises(InvalidRequest, match="missing"):
        area.assemble([SourceFileEntry("config.json", sha(b"never sent"), 10)])
