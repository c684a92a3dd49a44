"""The engine core's decoder (engine/token_decoder.py) decodes as transformers' tokenizer does,
special tokens included, and is saved only where it does; a folder without one, or a file that
is not a tokenizer, is handled as before: transformers, or an InvalidRequest naming the folder."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from runtime_service.engine.detokenizer import IncrementalDetokenizer
from runtime_service.engine.token_decoder import (DECODER_FILE, TokenDecoder, load_decoder,
                                                  save_decoder)
from runtime_service.engine.tokenizer_load import load_tokenizer
from runtime_service.errors import InvalidRequest
from support.tiny_llama import make_tiny_llama

TEXT = "Hello, world! ¿Qué tal?  Spaces,\ttabs\nand 日本語 with émojis 🙂 and <|im_start|>tags"


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir(smollm2_dir, tmp_path_factory):
    """SmolLM2's tokenizer files alone, in a folder the tests may write to."""
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (smollm2_dir / name).is_file():
            shutil.copyfile(smollm2_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def word_level_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny"))


def _sequences(tokenizer, seed=0):
    draw = random.Random(seed)
    specials = tokenizer.all_special_ids
    encoded = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return [encoded, specials + encoded + specials,
            *([draw.randrange(len(tokenizer)) for _ in range(draw.randrange(1, 40))]
              for _ in range(200))]


@pytest.mark.parametrize("which", ["smollm2_tokenizer_dir", "word_level_dir"])
def test_the_saved_decoder_decodes_as_transformers_does(which, request, tmp_path):
    folder = request.getfixturevalue(which)
    reference = load_tokenizer(folder)
    assert save_decoder(reference, tmp_path) == ""
    decoder = load_decoder(tmp_path)
    assert isinstance(decoder, TokenDecoder)
    for ids in _sequences(reference):
        for skip in (True, False):
            assert decoder.decode(ids, skip_special_tokens=skip,
                                  clean_up_tokenization_spaces=False) == reference.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    # streamed: the same deltas, token by token, as with transformers' tokenizer
    ids = reference(TEXT, add_special_tokens=False)["input_ids"]
    assert _deltas(decoder, ids) == _deltas(reference, ids)


def _deltas(tokenizer, ids):
    stream = IncrementalDetokenizer(tokenizer, ids[:3])
    return [stream.add([token]) for token in ids[3:]]


def test_special_tokens_named_only_in_tokenizer_config_are_skipped_as_transformers_skips_them(
        word_level_dir, tmp_path):
    """transformers marks them special in its backend as it loads; the saved backend keeps that."""
    folder = tmp_path / "model"
    shutil.copytree(word_level_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["additional_special_tokens"] = ["w5"]
    config["eos_token"] = "w6"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    reference = load_tokenizer(folder)
    assert reference.decode([4, 5, 6, 7], skip_special_tokens=True) == "w4 w7"
    assert save_decoder(reference, tmp_path) == ""
    decoder = load_decoder(tmp_path)
    assert decoder.decode([4, 5, 6, 7], skip_special_tokens=True) == "w4 w7"
    assert decoder.decode([4, 5, 6, 7]) == reference.decode([4, 5, 6, 7])


def test_a_tokenizer_whose_decode_differs_from_its_backend_gets_no_decoder(word_level_dir,
                                                                          tmp_path):
    class Rewriting:
        """transformers' tokenizer with a decode of its own (as a subclass may have)."""

        def __init__(self, tokenizer):
            self._tokenizer = tokenizer
            self.backend_tokenizer = tokenizer.backend_tokenizer

        def __len__(self):
            return len(self._tokenizer)

        def batch_decode(self, sequences, **kwargs):
            return [text.replace("w1", "W1") for text in
                    self._tokenizer.batch_decode(sequences, **kwargs)]

    why = save_decoder(Rewriting(load_tokenizer(word_level_dir)), tmp_path)
    assert "its backend decodes [1] as 'w1', transformers as 'W1'" in why
    assert not (tmp_path / DECODER_FILE).exists()
    assert "is not a fast tokenizer" in save_decoder(object(), tmp_path)


def test_a_folder_without_a_decoder_decodes_through_transformers(word_level_dir):
    tokenizer = load_decoder(word_level_dir)
    assert not isinstance(tokenizer, TokenDecoder)
    assert tokenizer.decode([3, 4]) == "w3 w4"
    assert load_decoder(None) is None


@pytest.mark.parametrize("content", [b"\x00\x01", b"[" * 100000 + b"]" * 100000, b"{}"])
def test_a_decoder_file_that_is_not_a_tokenizer_is_an_invalid_request(tmp_path, content):
    (tmp_path / DECODER_FILE).write_bytes(content)
    with pytest.raises(InvalidRequest, match=f"cannot load the tokenizer in {tmp_path}: "
                                             f"{DECODER_FILE}"):
        load_decoder(tmp_path)


def test_the_decoder_refuses_transformers_clean_up_of_spaces(word_level_dir, tmp_path):
    save_decoder(load_tokenizer(word_level_dir), tmp_path)
    with pytest.raises(ValueError, match="clean-up"):
        load_decoder(tmp_path).decode([3], clean_up_tokenization_spaces=True)
