"""Build progress for people and for logs: a redrawn bar on a terminal, plain lines otherwise
(Kubernetes Job logs), at most one line per stage change or tenth of a stage."""

from __future__ import annotations

import sys
import time

from builder_service.pipeline import BuildProgress

BAR_WIDTH = 28


def _amount(value: int, unit: str) -> str:
    if unit == "bytes":
        return f"{value / (1 << 20):.1f} MiB"
    return f"{value} {unit}".strip()


class ProgressPrinter:
    def __init__(self, stream=None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._stage = None
        self._decile = -1
        self._started = time.monotonic()

    def __call__(self, event: BuildProgress) -> None:
        if self.tty:
            self._draw(event)
        else:
            self._log(event)

    def _draw(self, event: BuildProgress) -> None:
        if self._stage is not None and event.stage != self._stage:
            self.stream.write("\n")
        self._stage = event.stage
        if event.total:
            filled = int(BAR_WIDTH * min(event.done, event.total) / event.total)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            line = (f"{event.stage:<9} [{bar}] {100 * event.done // event.total:3d}% "
                    f"{_amount(event.done, event.unit)}/{_amount(event.total, event.unit)}")
        else:
            line = f"{event.stage:<9}"
        self.stream.write(f"\r\x1b[2K{line}  {event.message[:60]}")
        self.stream.flush()

    def _log(self, event: BuildProgress) -> None:
        decile = 10 * event.done // event.total if event.total else 0
        if event.stage == self._stage and decile == self._decile:
            return
        self._stage, self._decile = event.stage, decile
        elapsed = time.monotonic() - self._started
        self.stream.write(
            f"kiln-build t={elapsed:.1f}s stage={event.stage} done={event.done} "
            f"total={event.total} unit={event.unit or '-'} message={event.message!r}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._stage is not None:
            self.stream.write("\n")
            self.stream.flush()
