"""fill_then_rename: the target appears whole or not at all, and no partial folder is left."""

import os

import pytest

from runtime_service.store.atomic_folder import PARTIAL_MARK, fill_then_rename


def test_filled_folder_appears_under_the_target_name(tmp_path):
    target = tmp_path / "engines" / "abc"
    fill_then_rename(target, lambda folder: (folder / "weights").write_text("w"))
    assert (target / "weights").read_text() == "w"
    assert os.listdir(tmp_path / "engines") == ["abc"]


def test_a_failed_fill_leaves_neither_target_nor_partial(tmp_path):
    def fill(folder):
        (folder / "half").write_text("h")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fill_then_rename(tmp_path / "abc", fill)
    assert os.listdir(tmp_path) == []


def test_a_finished_rival_wins_the_race_and_an_unfinished_one_does_not(tmp_path):
    target = tmp_path / "abc"

    def rival_first(folder):
        (folder / "mine").write_text("m")
        target.mkdir()
        (target / "MANIFEST").write_text("theirs")
        (target / "more").write_text("x")      # non-empty: our rename fails

    fill_then_rename(target, rival_first, finished=lambda t: (t / "MANIFEST").is_file())
    assert sorted(os.listdir(target)) == ["MANIFEST", "more"]
    assert not [n for n in os.listdir(tmp_path) if PARTIAL_MARK in n]

    unfinished = tmp_path / "def"

    def rival_unfinished(folder):
        unfinished.mkdir()
        (unfinished / "half").write_text("h")

    with pytest.raises(OSError):
        fill_then_rename(unfinished, rival_unfinished,
                         finished=lambda t: (t / "MANIFEST").is_file())
