"""Shards the builder writes are what the runtime's parallel layers load: a tp=2 engine on two
gloo processes, and a pp=2 engine run stage after stage, give the unsharded model's logits; so
does a tp=2 engine of a vocabulary two does not divide (its lm_head padded with a zero row),
and one of a single KV head (each rank repeating it). Rejoining a split gives back the whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from builder_service.builder import EngineBuilder
from builder_service.reshard import KilnShards
from builder_service.settings import BuildSpec
from builder_service.sources import SourceResolver
from runtime_service.model.parallel import ParallelContext
from runtime_service.format.engine_config import EngineConfig, Mapping
from runtime_service.model.loader import load_model
from runtime_service.store import LocalStore
from support.tiny_llama import make_tiny_llama

from support.servers import REPO, free_port, subprocess_env
from tp_worker import TOKENS, kv_caches, prefill_metadata

WORKER = Path(__file__).with_name("tp_worker.py")


def build(tmp_path, source, tp, pp):
    builder = EngineBuilder(LocalStore(tmp_path / "store"),
                            SourceResolver(tmp_path / "work", None), tmp_path / "work")
    return builder.build(BuildSpec(source=str(source), dtype="float32",
                                   mapping=Mapping(tp, pp))).engine.uri


def reference_logits(hf_folder) -> torch.Tensor:
    model = LlamaForCausalLM.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].float()


def test_tp2_engine_on_two_gloo_ranks_matches_the_unsharded_model(tmp_path, tiny_hf):
    _assert_tp2_matches_unsharded(tmp_path, tiny_hf)


def test_a_vocabulary_tp_does_not_divide_is_padded_and_cut_off_again(tmp_path):
    """257 tokens at tp 2: each rank holds 129 rows of lm_head, the second's last row zero, and
    the gathered logits lose that row again (TensorRT-LLM pads its vocabulary the same way; a
    fine-tune with 32,001 tokens was refused at tp 2 before)."""
    hf = make_tiny_llama(tmp_path / "hf", vocab_size=257)
    engine = _assert_tp2_matches_unsharded(tmp_path, hf)
    heads = [load_file(str(Path(engine) / f"rank{r}.safetensors"))["lm_head.weight"]
             for r in range(2)]
    assert [tuple(h.shape) for h in heads] == [(129, 64), (129, 64)]
    assert not heads[1][-1].any()
    full = load_file(str(hf / "model.safetensors"))["lm_head.weight"]
    assert torch.equal(torch.cat(heads)[:257], full)
    rejoined = KilnShards(Path(engine), EngineConfig.from_dict(
        json.loads((Path(engine) / "config.json").read_text())))
    assert torch.equal(rejoined.get("lm_head.weight"), full)


def test_fewer_kv_heads_than_ranks_are_repeated_on_each(tmp_path):
    """One KV head at tp 2 (TensorRT-LLM repeats KV heads the same way): each rank holds q's
    half and the whole of k and v, and the split engine gives the unsharded logits."""
    hf = make_tiny_llama(tmp_path / "hf", num_key_value_heads=1)
    engine = Path(_assert_tp2_matches_unsharded(tmp_path, hf))
    qkv = [load_file(str(engine / f"rank{r}.safetensors"))["layers.0.attn.qkv_proj.weight"]
           for r in range(2)]
    head_dim = 16                                        # 64 hidden / 4 heads
    assert [tuple(t.shape) for t in qkv] == [(32 + 2 * head_dim, 64)] * 2
    assert torch.equal(qkv[0][32:], qkv[1][32:])         # the one k and v head, on both
    rejoined = KilnShards(engine, EngineConfig.from_dict(
        json.loads((engine / "config.json").read_text())))
    full = load_model(hf).model.layers["0"].attn.qkv_proj.weight
    assert torch.equal(rejoined.get("layers.0.attn.qkv_proj.weight"), full)


def _assert_tp2_matches_unsharded(tmp_path, tiny_hf) -> str:
    engine = build(tmp_path, tiny_hf, tp=2, pp=1)
    port = free_port()
    outs = [tmp_path / f"logits{r}.safetensors" for r in range(2)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), engine, str(r), "2", str(port),
                               str(outs[r])], cwd=REPO, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, output
    expected = reference_logits(tiny_hf)
    for out in outs:
        logits = load_file(out)["logits"]
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    unsharded = load_model(tiny_hf).model
    with torch.no_grad():
        single = unsharded.compute_logits(unsharded(
            torch.tensor(TOKENS), prefill_metadata(len(TOKENS)), kv_caches(unsharded, len(TOKENS))))
    torch.testing.assert_close(load_file(outs[0])["logits"], single, atol=1e-5, rtol=1e-5)
    return engine


def test_pp2_engine_stages_run_in_turn_match_the_unsharded_model(tmp_path, tiny_hf):
    engine = build(tmp_path, tiny_hf, tp=1, pp=2)
    stages = [load_model(engine, parallel=ParallelContext(pp_rank=r, pp_size=2), rank=r).model
              for r in range(2)]
    meta = prefill_metadata(len(TOKENS))
    with torch.no_grad():
        hidden = stages[0](torch.tensor(TOKENS), meta, kv_caches(stages[0], len(TOKENS)))
        hidden = stages[1](hidden, meta, kv_caches(stages[1], len(TOKENS)))
        logits = stages[1].compute_logits(hidden)
    torch.testing.assert_close(logits, reference_logits(tiny_hf), atol=1e-4, rtol=1e-4)
