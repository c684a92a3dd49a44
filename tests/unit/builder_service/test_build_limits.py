"""Build limits and targets are bounded before any work starts (issue 15, defect 6: the builder
accepted max_batch_size and max_beam_width of 2**32-1 and a GPU capability of "abc")."""

import pytest

from builder_service.settings import MAX_LIMITS, BuildSpec
from runtime_service.errors import InvalidRequest
from runtime_service.format.engine_config import Target


@pytest.mark.parametrize("name", sorted(MAX_LIMITS))
def test_limits_past_their_bound_are_refused(name):
    with pytest.raises(InvalidRequest, match=name):
        BuildSpec(source="/m", **{name: 2 ** 32 - 1})
    BuildSpec(source="/m", **{name: MAX_LIMITS[name]})


@pytest.mark.parametrize("capability", ["abc", "9", "9.0.1", "x" * 100])
def test_a_capability_that_is_not_major_minor_is_refused(capability):
    with pytest.raises(InvalidRequest, match="capability"):
        BuildSpec(source="/m", target=Target(device="cuda", capability=capability))


def test_a_real_capability_is_accepted():
    assert BuildSpec(source="/m", target=Target(device="cuda", capability="9.0")).target
