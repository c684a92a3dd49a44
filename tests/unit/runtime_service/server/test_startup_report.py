"""The start-up clock: phases in order, tuning booked as its own phase, a log line that parses."""

import time

import pytest

from runtime_service.server.startup_report import (PHASES, StartupClock, StartupReport,
                                                   process_age_s)


def test_tuning_inside_a_phase_is_moved_to_tuning():
    tuned = [0.0]
    clock = StartupClock(lambda: tuned[0])
    with clock.phase("graph_capture"):
        time.sleep(0.02)
        tuned[0] += 5.0               # the tuner reports 5 s spent inside this phase
    report = clock.report(tuned_shapes=3)
    seconds = dict(report.seconds)
    assert seconds["tuning"] == pytest.approx(5.0)
    assert seconds["graph_capture"] == 0.0      # 0.02 s wall less 5 s of tuning, floored
    assert report.tuned_shapes == 3


def test_phases_accumulate_and_total():
    clock = StartupClock()
    clock.add("verify", 1.5)
    clock.add("verify", 0.5)
    clock.add("load", 2.0)
    report = clock.report()
    assert [name for name, _ in report.seconds] == list(PHASES)
    assert dict(report.seconds)["verify"] == 2.0
    assert report.total_s == pytest.approx(4.0)


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown start-up phase 'compile'"):
        StartupClock().add("compile", 1.0)


def test_report_needs_every_phase_in_order():
    with pytest.raises(ValueError, match="phases"):
        StartupReport((("load", 1.0),))
    with pytest.raises(ValueError, match=">= 0"):
        StartupReport(tuple((name, -1.0) for name in PHASES))


def test_log_line_round_trips():
    clock = StartupClock()
    clock.add("pull", 3.25)
    report = clock.report(tuned_shapes=0, tuning_source="local", pulled_bytes=1234,
                          kernel_files_from_store=57, kernels_compiled=3, compile_workers=15)
    fields = StartupReport.parse_log_line("2026-12-02 INFO kiln.runtime " + report.log_line())
    assert fields["pull_s"] == 3.25 and fields["total_s"] == 3.25
    assert fields["tuning_source"] == "local" and fields["pulled_bytes"] == 1234
    assert fields["kernel_files_from_store"] == 57 and fields["kernels_compiled"] == 3
    assert fields["compile_workers"] == 15
    assert set(fields) >= {f"{name}_s" for name in PHASES}


def test_process_age_is_this_process_lifetime():
    age = process_age_s()
    assert 0.0 < age < 24 * 3600
