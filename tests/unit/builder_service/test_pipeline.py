import json
import shutil

import pytest
import torch
from safetensors import safe_open

from builder_service.pipeline import build_engine_folder, convert_checkpoint
from builder_service.reshard import KilnShards
from builder_service.settings import BuildSpec
from builder_service.sources import SourceResolver
from runtime_service.format.engine_config import EngineConfig, Mapping
from runtime_service.format.engine_format import (FORMAT_NAME, MANIFEST, detect_model_kind,
                                           verify_engine_folder)
from runtime_service.errors import InvalidRequest
from runtime_service.model.hf_convert import SafetensorsFolder, convert_hf_tensors
from runtime_service.model.loader import load_model
from support.tiny_llama import make_tiny_llama


def tensors(path):
    with safe_open(path, framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def engine(tmp_path, source_folder, tp=1, pp=1, dtype="float32", name="engine"):
    resolver = SourceResolver(tmp_path / "work", None)
    source = resolver.resolve(str(source_folder))
    spec = BuildSpec(source=str(source_folder), dtype=dtype, mapping=Mapping(tp, pp))
    target = EngineConfig(model=source.config.model, mapping=spec.mapping, quant=spec.quant,
                          build=spec.build_config(source.config.model), target=spec.target,
                          format=FORMAT_NAME)
    out = tmp_path / name
    build_engine_folder(source, target, "f" * 64, out)
    return out


def test_tp2_engine_holds_halves_that_rejoin_into_the_converted_model(tmp_path, tiny_hf):
    folder = engine(tmp_path, tiny_hf, tp=2)
    verify_engine_folder(folder)
    assert detect_model_kind(folder) == "engine"
    config = EngineConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert config.mapping.tp_size == 2 and config.build.dtype == "float32"
    rank0 = tensors(folder / "rank0.safetensors")
    rank1 = tensors(folder / "rank1.safetensors")
    full = dict(convert_hf_tensors(SafetensorsFolder(tiny_hf), config.model))
    qkv = full["layers.0.attn.qkv_proj.weight"]
    assert rank0["layers.0.attn.qkv_proj.weight"].shape[0] == qkv.shape[0] // 2
    assert rank0["layers.0.attn.o_proj.weight"].shape[1] == 64 // 2
    assert torch.equal(rank0["embed_tokens.weight"], rank1["embed_tokens.weight"])
    rejoined = KilnShards(folder, config)
    for name, tensor in full.items():
        assert torch.equal(rejoined.get(name), tensor), name


def test_pp2_ranks_hold_only_their_stage(tmp_path, tiny_hf):
    folder = engine(tmp_path, tiny_hf, pp=2)
    first = set(tensors(folder / "rank0.safetensors"))
    last = set(tensors(folder / "rank1.safetensors"))
    assert "embed_tokens.weight" in first and "lm_head.weight" not in first
    assert all(not n.startswith("layers.1.") for n in first)
    assert "lm_head.weight" in last and "norm.weight" in last
    assert "embed_tokens.weight" not in last
    assert all(not n.startswith("layers.0.") for n in last)


def test_rebuilding_an_engine_with_another_split_matches_building_from_hf(tmp_path, tiny_hf):
    direct = engine(tmp_path, tiny_hf, tp=1, name="direct")
    split = engine(tmp_path, tiny_hf, tp=2, pp=2, name="split")
    rebuilt = engine(tmp_path, split, tp=1, name="rebuilt")
    assert ((direct / "rank0.safetensors").read_bytes()
            == (rebuilt / "rank0.safetensors").read_bytes())


def test_dtype_conversion_happens_when_rank_files_are_written(tmp_path, tiny_hf):
    folder = engine(tmp_path, tiny_hf, dtype="bfloat16")
    assert {t.dtype for t in tensors(folder / "rank0.safetensors").values()} == {torch.bfloat16}


def test_engine_folder_copies_tokenizer_and_manifest_lists_every_file(tmp_path, tiny_hf):
    folder = engine(tmp_path, tiny_hf, tp=2)
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert (folder / "tokenizer" / "generation_config.json").is_file()
    manifest = json.loads((folder / MANIFEST).read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert listed == {"config.json", "rank0.safetensors", "rank1.safetensors",
                      "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                      "tokenizer/generation_config.json", "tokenizer/kiln_decoder.json"}
    assert manifest["engine_key"] == "f" * 64


def test_the_cores_decoder_is_built_fresh_and_left_out_for_a_tokenizer_it_cannot_read(
        tmp_path, tiny_hf, caplog):
    from runtime_service.engine.token_decoder import DECODER_FILE, load_decoder
    from runtime_service.engine.tokenizer_load import load_tokenizer

    source = tmp_path / "source"
    shutil.copytree(tiny_hf, source)
    (source / DECODER_FILE).write_text("not what the builder writes")    # never copied
    folder = engine(tmp_path, source)
    reference = load_tokenizer(tiny_hf)
    assert load_decoder(folder / "tokenizer").decode([3, 4, 5]) == reference.decode([3, 4, 5])
    # Unreadable tokenizer files are copied as before (an engine may serve token ids alone),
    # without a decoder, and the build log says why, naming the source.
    (source / "tokenizer.json").write_bytes(b"\x00\x01")
    second = engine(tmp_path, source, name="second")
    assert (second / "tokenizer" / "tokenizer.json").read_bytes() == b"\x00\x01"
    assert not (second / "tokenizer" / DECODER_FILE).exists()
    assert f"cannot load the tokenizer in {source}: " in caplog.text


def test_tied_embeddings_single_rank_omits_the_head_and_tp2_shards_it(tmp_path):
    hf = make_tiny_llama(tmp_path / "tied", tie_word_embeddings=True)
    single = tensors(engine(tmp_path, hf, name="e1") / "rank0.safetensors")
    assert "lm_head.weight" not in single
    split = tensors(engine(tmp_path, hf, tp=2, name="e2") / "rank1.safetensors")
    assert torch.equal(split["lm_head.weight"], single["embed_tokens.weight"][128:])


def test_checkpoint_loads_with_the_same_weights_as_the_hf_folder(tmp_path, tiny_hf):
    resolver = SourceResolver(tmp_path / "work", None)
    out = tmp_path / "ckpt"
    convert_checkpoint(resolver.resolve(str(tiny_hf)), out)
    assert detect_model_kind(out) == "checkpoint" and not (out / MANIFEST).exists()
    from_ckpt = dict(load_model(out).model.named_parameters())
    from_hf = dict(load_model(tiny_hf).model.named_parameters())
    assert from_ckpt.keys() == from_hf.keys()
    assert all(torch.equal(from_ckpt[k], from_hf[k]) for k in from_hf)


def test_convert_refuses_a_non_empty_output(tmp_path, tiny_hf):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    with pytest.raises(InvalidRequest, match="not empty"):
        convert_checkpoint(SourceResolver(tmp_path / "w", None).resolve(str(tiny_hf)),
                           tmp_path / "out")
    assert (tmp_path / "out" / "x").read_text() == "keep me"


def test_truncated_weights_are_refused(tmp_path):
    hf = make_tiny_llama(tmp_path / "bad")
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(InvalidRequest, match="corrupt"):
        engine(tmp_path, hf)


def test_missing_weights_are_refused(tmp_path):
    hf = make_tiny_llama(tmp_path / "none")
    (hf / "model.safetensors").unlink()
    with pytest.raises(InvalidRequest, match="safetensors"):
        engine(tmp_path, hf)


def test_unknown_architecture_is_refused(tmp_path):
    hf = make_tiny_llama(tmp_path / "gpt")
    config = json.loads((hf / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidRequest, match="unknown architecture"):
        SourceResolver(tmp_path / "w", None).resolve(str(hf))


Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize("name, edit", [
    (Q, lambda t: t[:-1]),                       # a row short: used to build, then fail to load
    (Q, lambda t: t[:, :-1]),                    # a column short: a bare torch.cat error
    (Q, lambda t: t.flatten()),
    (Q, lambda t: t.to(torch.int32)),            # codes where floats belong: used to build
    ("model.embed_tokens.weight", lambda t: t[:10]),
    ("model.norm.weight", lambda t: t[None]),
])
def test_a_weight_of_another_shape_or_kind_than_config_json_says_is_refused(tmp_path, name,
                                                                             edit):
    from safetensors.torch import load_file, save_file
    hf = make_tiny_llama(tmp_path / "hf")
    weights = load_file(str(hf / "model.safetensors"))
    weights[name] = edit(weights[name]).contiguous()
    save_file(weights, str(hf / "model.safetensors"))
    with pytest.raises(InvalidRequest, match=f"{name} must be float16/bfloat16/float32 of "
                                             r"shape \[\d+(, \d+)?\] for the model's config"):
        engine(tmp_path, hf)


def test_a_dead_builds_partial_folder_is_removed_when_the_engine_is_next_built(tmp_path, tiny_hf):
    """A build killed outright (SIGKILL, OOM) leaves its partial folder; the next build of the
    same folder removes it, but never one a live build elsewhere holds (its flock), nor another
    folder's."""
    import subprocess
    import sys
    dead = tmp_path / ".partial-engine-dead1234"
    live = tmp_path / ".partial-engine-live1234"
    other = tmp_path / ".partial-other-dead1234"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "rank0.safetensors").write_bytes(b"half")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
         str(live)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        folder = engine(tmp_path, tiny_hf)
        verify_engine_folder(folder)
        assert not dead.exists()
        assert (live / "rank0.safetensors").read_bytes() == b"half"
        assert other.exists()
    finally:
        holder.communicate("", timeout=10)
    assert sorted(p.name for p in tmp_path.glob(".partial-engine-*")) == [live.name]
