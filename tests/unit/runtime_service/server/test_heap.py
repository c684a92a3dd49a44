"""A serving process sets its start-up heap aside: what exists is frozen out of collections,
garbage made before is gone, and young objects are collected by the burst."""

from __future__ import annotations

import gc
import weakref

import pytest

from runtime_service.server.heap import (YOUNG_THRESHOLD, set_start_up_heap_aside,
                                       start_up_heap_aside)


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Node:
    def __init__(self):
        self.other = self


def test_start_up_objects_leave_the_collections_and_garbage_goes_first(restored_gc):
    gc.unfreeze()
    kept = [Node() for _ in range(100)]                  # live start-up objects
    cycle = Node()
    garbage = weakref.ref(cycle)
    del cycle                                            # start-up garbage: a cycle
    set_start_up_heap_aside("test")
    assert garbage() is None            # collected before the freeze, not frozen for good
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    walked = {id(o) for o in gc.get_objects()}
    assert not any(id(o) in walked for o in kept)      # frozen: no collection walks them
    made_after = Node()
    assert id(made_after) in {id(o) for o in gc.get_objects()}   # new objects are, as ever


def test_a_process_that_serves_engines_in_turn_gets_its_collector_back(restored_gc):
    """What a benchmark does between engines: once the block ends, an engine dropped in it
    (held by a reference cycle) can be collected."""
    gc.unfreeze()
    before = gc.get_threshold()
    engine = Node()
    dropped = weakref.ref(engine)
    with start_up_heap_aside("bench"):
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD and gc.get_freeze_count() > 0
        del engine
        gc.collect()
        assert dropped() is not None            # frozen: not collected while set aside
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
    gc.collect()
    assert dropped() is None
