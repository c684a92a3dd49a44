"""The garbage collector in a serving process: the start-up heap set aside, young objects
collected by the burst, not by the hundred.

A pod's processes hold hundreds of thousands of objects from start-up (torch, transformers, the
model's modules, compiled kernels) that live as long as the process. A full collection walks all
of them: 66 ms on the CI CPU for the imports alone. `gc.freeze()` moves what exists once the
start has finished into a permanent generation that collections skip.

The youngest generation is collected whenever tracked allocations outnumber deallocations by
the threshold, 700 by default. A step's outputs for 256 streams make a few thousand objects
that live only until the event loop has sent them, so the default collected several times a
step, each walking the live ones again.

A CPU pod under 64 and 256 streams of 128/128 tokens, 10 s of serving (bench/NOTES.md,
2026-12-04, fourth session): the gRPC process spent 390-510 ms in collections, full ones of up
to 38 ms; with the start-up heap frozen, 430 ms; with the threshold at 10,000 as well, 5-8 ms
(4 collections). The engine core's 20 ms went to none.
Cyclic garbage now waits for a collection a little longer: at most the threshold's worth of
objects. What is frozen is never collected: a pod serves one engine for its life, and a process
that serves several in turn (a benchmark) sets the heap aside for each (start_up_heap_aside).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("kiln.runtime")

YOUNG_THRESHOLD = 10_000          # the CPU pod above: 7,000 left 6 collections in 10 s


def set_start_up_heap_aside(who: str) -> None:
    """Collects once (the start-up's garbage goes now, not in the middle of a request), freezes
    the survivors out of every later collection, and raises the youngest generation's
    threshold. Called once a start has finished, just off its critical path: the engine core
    right after STARTED, the pod a second after SERVING."""
    began = time.perf_counter()
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
    log.info("%s: %d start-up objects set aside from garbage collection in %.0f ms", who,
             gc.get_freeze_count(), 1e3 * (time.perf_counter() - began))


@contextmanager
def start_up_heap_aside(who: str) -> Iterator[None]:
    """set_start_up_heap_aside for a while, for a process that serves one engine after another
    (a benchmark): frozen objects are never collected, so an engine dropped while they are
    frozen would keep its device memory through its reference cycles. On exit: unfrozen, and
    the threshold as it was."""
    threshold = gc.get_threshold()
    set_start_up_heap_aside(who)
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
