"""`pytest -p support.repeat --repeat N`: runs the selected tests N times in a row, in rounds.

Round r runs every selected test of a module once, in file order, before round r + 1 starts, so
a test that leaves work behind disturbs the next test in every round (the way the HLAPI cancel
test flaked), while module fixtures (servers, built engines) are made once per module. Used for
the cancellation family's 50-in-a-row check (issue 15); any failure fails the run.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--repeat", type=int, default=1, help="run each selected test N times")


def pytest_generate_tests(metafunc):
    count = metafunc.config.getoption("repeat")
    if count > 1:
        metafunc.fixturenames.append("_repeat_round")
        metafunc.parametrize("_repeat_round", range(count), ids=lambda r: f"round{r}")


@pytest.fixture
def _repeat_round(request):
    return request.param


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    if config.getoption("repeat") <= 1:
        return
    modules = {}
    for position, item in enumerate(items):
        modules.setdefault(item.module.__name__, position)

    def round_of(item) -> int:
        return item.callspec.params.get("_repeat_round", 0) if hasattr(item, "callspec") else 0
    order = {id(item): position for position, item in enumerate(items)}
    items.sort(key=lambda item: (modules[item.module.__name__], round_of(item),
                                 order[id(item)]))
