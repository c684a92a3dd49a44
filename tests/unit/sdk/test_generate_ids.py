"""`kiln generate --ids` reads token ids the way it prints them; other bad input is refused in one
line, without a traceback."""

from __future__ import annotations

import pytest

from kiln import cli


@pytest.mark.parametrize("text", ["5,17,99", "5 17 99", " 5, 17 ,99 ", "5\t17\n99"])
def test_token_ids_are_separated_by_commas_or_spaces(text):
    assert cli.token_ids(text) == [5, 17, 99]


@pytest.mark.parametrize("text, named", [("5 x 99", "'x'"), ("5;17", "'5;17'"), ("-1", "'-1'"),
                                         ("1.5", "'1.5'"), (" , ", "at least one token id")])
def test_bad_ids_are_a_usage_error_with_one_clear_line_and_no_traceback(text, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "--model", "/no/such/model", "--ids", text])
    assert exit_.value.code == 2                       # argparse's code for bad input
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("kiln generate: error: --ids ")
    assert named in err.splitlines()[-1] and "Traceback" not in err


def test_a_sampling_value_out_of_range_is_refused_without_a_traceback(capsys):
    code = cli.main(["generate", "--model", "/no/such/model", "--temperature", "-1", "hi"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == ("kiln generate: error: INVALID_ARGUMENT: SamplingConfig.temperature "
                           "must be in [0.0, 100.0], got -1.0")
