"""Which batch sizes the decode graphs and which token counts the prefill graphs capture
(the graphs themselves need CUDA: tests/gpu/test_triton_engine.py, test_prefill_graphs.py)."""

import pytest

from runtime_service.engine.executor_options import ExecutorOptions
from runtime_service.errors import InvalidRequest
from runtime_service.model.cuda_graphs import default_batch_sizes
from runtime_service.model.prefill_graphs import default_token_buckets


def test_decode_graph_batch_sizes():
    assert default_batch_sizes(1) == [1]
    assert default_batch_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    assert default_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]


def test_prefill_buckets_double_from_16_up_to_the_limit():
    assert default_token_buckets(512) == [16, 32, 64, 128, 256, 512]
    assert default_token_buckets(96) == [16, 32, 64, 96]
    # past 512 the buckets step by 256, so a long prompt pads by less than 256 rows
    assert default_token_buckets(2048) == [16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536,
                                           1792, 2048]
    assert default_token_buckets(1000) == [16, 32, 64, 128, 256, 512, 768, 1000]
    assert default_token_buckets(16) == [16]
    assert default_token_buckets(15) == []
    assert default_token_buckets(0) == []


def test_a_negative_prefill_graph_limit_is_refused():
    with pytest.raises(InvalidRequest, match="cuda_graph_max_prefill_tokens"):
        ExecutorOptions(cuda_graph_max_prefill_tokens=-1)
    assert ExecutorOptions(cuda_graph_max_prefill_tokens=0).cuda_graph_max_prefill_tokens == 0
