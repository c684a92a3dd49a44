"""Build progress for people and for logs: a tqdm bar per stage on a terminal, plain
`kiln-build t=.. stage=..` lines otherwise (Kubernetes Job logs), at most one line per stage
change or tenth of a stage (runtime_service.store.progress draws both)."""

from __future__ import annotations

from builder_service.pipeline import BuildProgress
from runtime_service.store.progress import StageProgress

# For tests: hold a build at its first progress event of this stage until it is stopped (the
# CLI: a signal; the server: the caller cancelling), so a test stops a build midway without
# racing it. Unset, nothing waits.
TEST_PAUSE_ENV = "KILN_BUILD_TEST_PAUSE_AT"


class ProgressPrinter:
    def __init__(self, stream=None, tty: bool | None = None):
        self._display = StageProgress("kiln-build", stream, tty)

    @property
    def tty(self) -> bool:
        return self._display.tty

    def __call__(self, event: BuildProgress) -> None:
        self._display.update(event.stage, event.done, event.total, event.unit, event.message)

    def finish(self) -> None:
        self._display.close()
