"""IncrementalDetokenizer with SmolLM2's real byte-level BPE tokenizer.

The increments, concatenated, must equal decoding all output ids at once, even when a character's
bytes are split across tokens (emoji, CJK, accents) and words carry their leading space.
"""

import pytest

from runtime_service.engine.detokenizer import IncrementalDetokenizer

PROMPT = "<|im_start|>user\nSay something in several languages.<|im_end|>\n<|im_start|>assistant\n"

TEXTS = [
    "Héllo wörld, naïve café in Zürich — déjà vu!",
    " 日本語のテキストです。中文也可以。",
    "Emoji: 😀🎉 party 👩‍👩‍👧 family 🏳️‍🌈 flag",
    " leading space,  double  spaces and a trailing one ",
    "mixed: Ça va? 你好 🙂 done. Ελληνικά και русский текст",
    "🤖",
    "\n\n  indented\tline\n",
]


@pytest.fixture(scope="session")
def tokenizer():
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from runtime_service.sample_model import smollm2_folder

    return AutoTokenizer.from_pretrained(str(smollm2_folder()))


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def stream(tokenizer, prompt_ids, output_ids, chunk=1):
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    pieces = [detok.add(output_ids[i:i + chunk]) for i in range(0, len(output_ids), chunk)]
    return detok, pieces


def test_the_texts_split_characters_across_tokens(tokenizer):
    """Guards the test data: without split characters the other tests would prove little."""
    split = [text for text in TEXTS
             if any("\ufffd" in tokenizer.decode([t]) for t in encode(tokenizer, text))]
    assert len(split) >= 4


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_increments_concatenate_to_the_full_decode(tokenizer, text, chunk):
    prompt_ids = encode(tokenizer, PROMPT)
    output_ids = encode(tokenizer, text)
    detok, pieces = stream(tokenizer, prompt_ids, output_ids, chunk)
    expected = tokenizer.decode(output_ids, skip_special_tokens=True)
    assert "".join(pieces) == expected == text
    assert detok.text == expected
    assert not any("\ufffd" in piece for piece in pieces)


@pytest.mark.parametrize("prompt", ["", "x", "Übersetze: ", "前文", "😀 "])
def test_prompt_context_does_not_leak_into_the_output(tokenizer, prompt):
    prompt_ids = encode(tokenizer, prompt) or encode(tokenizer, "\n")
    output_ids = encode(tokenizer, " the café 😀 says 你好")
    _, pieces = stream(tokenizer, prompt_ids, output_ids)
    assert "".join(pieces) == tokenizer.decode(output_ids, skip_special_tokens=True)


def test_leading_space_of_the_first_output_token_is_kept(tokenizer):
    prompt_ids = encode(tokenizer, "Answer:")
    output_ids = encode(tokenizer, " Yes")
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    assert detok.add(output_ids) == " Yes"


def test_complete_words_are_emitted_at_once_and_partial_characters_are_held(tokenizer):
    prompt_ids = encode(tokenizer, "Hi")
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    assert detok.add(encode(tokenizer, " there")) == " there"
    emoji_ids = encode(tokenizer, " 😀")
    assert len(emoji_ids) >= 2
    for token in emoji_ids[:-1]:
        assert detok.add([token]) == ""
    assert detok.add(emoji_ids[-1:]) == " 😀"
    assert detok.text == " there 😀"


def test_special_tokens_add_no_text(tokenizer):
    prompt_ids = encode(tokenizer, PROMPT)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    output_ids = encode(tokenizer, "Bye 👋") + [end]
    detok, pieces = stream(tokenizer, prompt_ids, output_ids)
    assert pieces[-1] == ""
    assert "".join(pieces) == tokenizer.decode(output_ids, skip_special_tokens=True) == "Bye 👋"


def test_flush_returns_a_trailing_partial_character_as_a_full_decode_would(tokenizer):
    output = encode(tokenizer, "ok 🙂")
    cut = output[:-1]                                  # stop in the middle of the emoji
    detok = IncrementalDetokenizer(tokenizer, encode(tokenizer, "Say:"))
    text = "".join(detok.add([t]) for t in cut) + detok.flush()
    assert text == tokenizer.decode(cut, skip_special_tokens=True)
    assert detok.flush() == ""
