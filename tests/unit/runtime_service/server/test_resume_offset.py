"""resume_offset reaches the sampler as seed_offset and must count tokens the input has."""

import pytest

from kiln.v1 import runtime_pb2
from runtime_service.errors import InvalidRequest
from runtime_service.server.convert import ServingLimits, engine_request


def resumed(ids, offset):
    return runtime_pb2.GenerateRequest(token_ids=runtime_pb2.TokenIds(ids=ids),
                                       resume_offset=offset)


def test_resume_offset_becomes_the_seed_offset():
    wanted = engine_request(resumed([1, 2, 3, 4], 3), None, ServingLimits())
    assert wanted.request.sampling.seed_offset == 3


@pytest.mark.parametrize("offset", [4, 5])
def test_a_resume_offset_past_the_input_is_invalid(offset):
    with pytest.raises(InvalidRequest, match="resume_offset"):
        engine_request(resumed([1, 2, 3, 4], offset), None, ServingLimits())
