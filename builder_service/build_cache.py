"""One build per engine key: a hit in the store returns at once, and concurrent requests for the
same key share the one build in flight.

Inside a process, later callers wait on the first caller's future; across processes sharing a work
folder (a server and a batch Job on one node), an exclusive file lock per key serializes them, and
the one that gets the lock second finds the engine published. Builders on different machines
may both build; they write identical bytes under one key and the manifest is never overwritten,
so the store still ends with one engine.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from runtime_service.format.engine_format import Manifest
from runtime_service.store import Store, check_engine_key


class BuildCache:
    def __init__(self, store: Store, lock_dir: Path):
        self.store = store
        self.lock_dir = Path(lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future] = {}

    def lookup(self, engine_key: str) -> Manifest | None:
        return self.store.read_engine_manifest(engine_key)

    def get_or_build(self, engine_key: str, build: Callable[[], None],
                     on_wait: Callable[[], None] = lambda: None) -> bool:
        """Runs `build` unless the engine exists or is being built; True when nothing was built."""
        check_engine_key(engine_key)
        if self.lookup(engine_key) is not None:
            return True
        with self._lock:
            future = self._in_flight.get(engine_key)
            owner = future is None
            if owner:
                future = self._in_flight[engine_key] = Future()
        if not owner:
            on_wait()
            future.result()
            return True
        try:
            with self._process_lock(engine_key):
                cached = self.lookup(engine_key) is not None
                if not cached:
                    build()
            future.set_result(None)
            return cached
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._in_flight[engine_key]

    @contextmanager
    def _process_lock(self, engine_key: str):
        with open(self.lock_dir / f"{engine_key}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
