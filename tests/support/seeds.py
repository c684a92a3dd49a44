"""The seed of a test module that draws fresh random inputs each run: random, so that runs
cover new inputs, and printed with every failure; KILN_TEST_SEED=<n> replays a failing one."""

from __future__ import annotations

import os
import random

ENV = "KILN_TEST_SEED"


def module_seed() -> int:
    value = os.environ.get(ENV, "")
    if value:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{ENV} must be an integer, got {value!r}") from None
    return random.randrange(2 ** 31)
