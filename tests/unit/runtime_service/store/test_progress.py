"""StageProgress off a terminal: at most one record per stage change or tenth of a stage, as a
plain line or, given a logger, as a structured log record (what --log-format json prints)."""

from __future__ import annotations

import io
import logging
import threading

from runtime_service.store.progress import StageProgress


def test_a_pull_logs_structured_records_at_most_one_per_tenth(caplog):
    logger = logging.getLogger("kiln.test.pull")
    display = StageProgress("kiln-pull", io.StringIO(), tty=False, logger=logger)
    report = display.bytes_callback("pull")
    total = 1000
    threads = [threading.Thread(target=lambda k=k: [report(d, total, "rank0") for d in
                                                    range(k, total + 1, 4)]) for k in range(4)]
    with caplog.at_level(logging.INFO, logger="kiln.test.pull"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        display.close()
    records = [r.kiln for r in caplog.records]
    assert 2 <= len(records) <= 11
    assert all(r["stage"] == "pull" and r["unit"] == "bytes" and r["total"] == total
               for r in records)
    assert records[-1]["done"] >= 900


def test_plain_lines_name_the_stage_change():
    stream = io.StringIO()
    display = StageProgress("kiln-build", stream, tty=False)
    display.update("resolve", 0, 1)
    display.update("resolve", 1, 1)
    display.update("publish", 0, 0, "bytes", "to s3://kiln/engines")
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["stage=resolve", "stage=resolve", "stage=publish"]
    assert lines[-1].endswith("message='to s3://kiln/engines'")
