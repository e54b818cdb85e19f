"""The simulator's tokenizer: reversible, stable across processes, realistic-ish counts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ttcdsl.runtime.sim.tokenizer import (
    EOS_ID,
    FILLER_WORDS,
    SPECIAL_TOKENS,
    STARTERS,
    SimTokenizer,
    tokenizer,
)


@given(st.text())
@example("Step 1 of 4: we now have 42.\n\n")
@example("café  \n\n\n\t x<|im_end|>12345 <|im_start|>")
@example("   word\r\n")
@example("\U0001f600 emoji and \u00e9")
def test_decode_inverts_encode_for_any_text(text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(
    st.lists(st.sampled_from(["<|im_end|>", "a", " ", "\n", "7", "é", "Step", " 42"]), max_size=30)
)
def test_roundtrip_of_token_soup(parts: list[str]) -> None:
    text = "".join(parts)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_ids_are_pinned() -> None:
    # Stable ids are part of the contract: clients store them (e.g. branches sent as input_ids).
    assert tokenizer.encode("The answer is 42.") == [2304, 2863, 2323, 355, 49]
    assert tokenizer.encode("Step 1 of 4:") == [2872, 281, 2307, 284, 61]
    assert tokenizer.vocab_size == 6278


def test_ids_are_the_same_in_a_fresh_process() -> None:
    text = "What is 17 + 25? Step 1 of 3: we now have 42. Vexingly quick.\n\n"
    code = f"from ttcdsl.runtime.sim.tokenizer import tokenizer;print(tokenizer.encode({text!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tokenizer.encode(text))
    assert SimTokenizer().encode(text) == tokenizer.encode(text)


def test_special_tokens_are_recognised_and_skippable() -> None:
    ids = tokenizer.encode("hi<|im_end|>")
    assert ids[-1] == EOS_ID == SPECIAL_TOKENS.index("<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi"
    assert tokenizer.is_special(EOS_ID) and not tokenizer.is_special(ids[0])


def test_counts_are_realistic() -> None:
    assert len(tokenizer.encode("The answer is 42.")) == 5
    assert len(tokenizer.encode(" 12345")) == 2  # numbers split into groups of up to 3 digits
    # An unknown word costs about one token per two letters, never one per letter.
    assert len(tokenizer.encode(" vexingly")) == 4
    sentence = "The quick brown fox jumps over the lazy dog."
    assert len(tokenizer.encode(sentence)) == 10


def test_filler_words_are_single_tokens() -> None:
    for word in FILLER_WORDS + STARTERS:
        assert len(tokenizer.encode(" " + word)) == 1, word
    assert tokenizer.encode("\n\n") == [tokenizer.piece_id("\n\n")]


def test_out_of_range_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(ValueError, match="out of vocabulary range"):
        tokenizer.validate_ids([-1])


def test_a_cut_multibyte_character_decodes_to_the_replacement_character() -> None:
    ids = tokenizer.encode("é")
    assert len(ids) == 2
    assert tokenizer.decode(ids[:1]) == "\ufffd"
