"""Quantized engines split over tp x pp ranks (real gloo processes on the CPU) give a single
rank's tokens: the shards are slices of one quantization and the layers split like their rows."""

from __future__ import annotations

import pytest

from runtime_service.distributed.rank_worker import start_ranked_executor
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from builder_service.settings import BuildSpec
from runtime_service.format.engine_config import Mapping, QuantConfig
from support.engine_logits import local_builder
from support.random_llama import make_random_llama

PROMPTS = [[5, 17, 99, 3, 250, 8, 9], list(range(10, 50))]
# grouped int4 shards, and FP8 row scales over ranks (W8A16 splits: test_quantized_build.py)
ALGOS = ["W4A16", "FP8"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Built in process (a subprocess per build costs its imports every time)."""
    hf = make_random_llama(tmp_path_factory.mktemp("hf") / "llama", num_hidden_layers=2)
    work = tmp_path_factory.mktemp("work")
    builder = local_builder(work)
    out = {}
    for algo in ALGOS:
        for tp, pp in [(1, 1), (2, 2)]:
            outcome = builder.build(BuildSpec(
                source=str(hf), dtype="float32", max_batch_size=4, max_seq_len=128,
                quant=QuantConfig(algo=algo, group_size=32), mapping=Mapping(tp, pp)))
            out[(algo, tp, pp)] = str(work / "store" / "engines" / outcome.engine.engine_key)
    return out


def greedy_tokens(executor) -> list[list[int]]:
    streams = [executor.submit(Request(f"r{i}", p, SamplingParams(max_new_tokens=8,
                                                                  ignore_eos=True)))
               for i, p in enumerate(PROMPTS)]
    return [[t for o in s for t in o.new_token_ids] for s in streams]


@pytest.mark.parametrize("algo", ALGOS)
def test_quantized_engine_on_tp2_pp2_ranks_gives_the_single_rank_tokens(algo, engines,
                                                                          tmp_path):
    options = ExecutorOptions(load_tokenizer=False, kv_max_tokens=512)
    single = Executor.from_folder(engines[(algo, 1, 1)], options).start()
    try:
        want = greedy_tokens(single)
    finally:
        single.shutdown()
    split = engines[(algo, 2, 2)]
    ranked = start_ranked_executor(split, split, options, tmp_path / "cache").start()
    try:
        assert greedy_tokens(ranked) == want
    finally:
        ranked.shutdown()


def test_one_kv_head_and_an_odd_vocabulary_on_two_ranks_give_the_single_rank_tokens(tmp_path):
    """tp 2 over a model with one KV head (each rank repeats it, its KV cache holding that
    head) and 321 tokens (lm_head padded to 161 rows a rank, the padding cut from the logits
    before sampling): the ranks' tokens are one rank's, here with int4 weights."""
    hf = make_random_llama(tmp_path / "hf", num_hidden_layers=2, num_key_value_heads=1,
                           vocab_size=321)
    builder = local_builder(tmp_path)
    folders = {}
    for tp in (1, 2):
        outcome = builder.build(BuildSpec(
            source=str(hf), dtype="float32", max_batch_size=4, max_seq_len=128,
            quant=QuantConfig(algo="W4A16", group_size=32), mapping=Mapping(tp, 1)))
        folders[tp] = str(tmp_path / "store" / "engines" / outcome.engine.engine_key)
    options = ExecutorOptions(load_tokenizer=False, kv_max_tokens=512)
    single = Executor.from_folder(folders[1], options).start()
    try:
        want = greedy_tokens(single)
    finally:
        single.shutdown()
    ranked = start_ranked_executor(folders[2], folders[2], options, tmp_path / "cache").start()
    try:
        assert greedy_tokens(ranked) == want
    finally:
        ranked.shutdown()
