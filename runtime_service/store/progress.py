"""Progress of long operations (engine pulls, builds) for people and for logs.

On a terminal each stage is a tqdm bar (bytes scaled to KiB/MiB/GiB, with rate and time left);
otherwise (a Kubernetes pod's log, a CI job, a pipe) each stage change and each tenth of a stage
is one plain line, `PREFIX t=.. stage=.. done=.. total=.. unit=.. message=..`, or, given a
logger, one log record with those fields, so `--log-format json` keeps every line JSON.
Updates may come from several threads (parallel ranged downloads).
"""

from __future__ import annotations

import logging
import sys
import threading
import time


class StageProgress:
    def __init__(self, prefix: str, stream=None, tty: bool | None = None,
                 logger: logging.Logger | None = None):
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.logger = logger
        self._lock = threading.Lock()
        self._bar = None
        self._stage: str | None = None
        self._decile = -1
        self._started = time.monotonic()

    def update(self, stage: str, done: int, total: int, unit: str = "", message: str = "") -> None:
        with self._lock:
            if self.tty:
                self._draw(stage, done, total, unit, message)
            else:
                self._line(stage, done, total, unit, message)

    def bytes_callback(self, stage: str):
        """A store ProgressFn `(done_bytes, total_bytes, message)` reporting as `stage`."""
        return lambda done, total, message: self.update(stage, done, total, "bytes", message)

    def _draw(self, stage: str, done: int, total: int, unit: str, message: str) -> None:
        from tqdm import tqdm
        if stage != self._stage:
            self._close_bar()
            self._stage = stage
            in_bytes = unit == "bytes"
            self._bar = tqdm(total=total or None, desc=f"{stage:<9}", file=self.stream,
                             unit="B" if in_bytes else f" {unit}" if unit else "it",
                             unit_scale=in_bytes, unit_divisor=1024 if in_bytes else 1000,
                             dynamic_ncols=True, leave=True)
        bar = self._bar
        if total and bar.total != total:
            bar.total = total
        if message:
            bar.set_postfix_str(message[:48], refresh=False)
        bar.update(max(0, done - bar.n))

    def _line(self, stage: str, done: int, total: int, unit: str, message: str) -> None:
        decile = 10 * done // total if total else 0
        if stage == self._stage and decile <= self._decile:
            return                      # reports from parallel readers may arrive out of order
        self._stage, self._decile = stage, decile
        elapsed = time.monotonic() - self._started
        if self.logger is not None:
            self.logger.info(self.prefix, extra={"kiln": {
                "t_s": round(elapsed, 1), "stage": stage, "done": done, "total": total,
                "unit": unit or "-", "message": message}})
            return
        self.stream.write(f"{self.prefix} t={elapsed:.1f}s stage={stage} done={done} "
                          f"total={total} unit={unit or '-'} message={message!r}\n")
        self.stream.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        with self._lock:
            self._close_bar()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
