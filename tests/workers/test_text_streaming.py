"""TextAssembler: incremental detokenisation and stop strings, driven with a byte-level fake tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

from services.text.streaming import TextAssembler


def decode(ids: Sequence[int]) -> str:
    """Token i is byte i: partial UTF-8 sequences decode to U+FFFD like real byte-level tokenizers."""
    return bytes(ids).decode("utf-8", errors="replace")


def feed_all(assembler: TextAssembler, text: str) -> list[str]:
    deltas = [assembler.feed(b) for b in text.encode()]
    deltas.append(assembler.finish())
    return [d for d in deltas if d]


def test_deltas_concatenate_to_the_text_and_never_split_a_character() -> None:
    asm = TextAssembler(decode, prompt_ids=list(b"prompt "))
    deltas = feed_all(asm, "héllo wörld ✓")
    assert "".join(deltas) == asm.text == "héllo wörld ✓"
    assert all("\ufffd" not in d for d in deltas)
    assert asm.tokens == len("héllo wörld ✓".encode())
    assert not asm.stopped


def test_stop_string_cuts_the_text_and_is_never_released() -> None:
    asm = TextAssembler(decode, prompt_ids=[], stop=["END", "\n\n"])
    deltas = feed_all(asm, "one two EN three END four")
    assert asm.stopped
    assert asm.text == "".join(deltas) == "one two EN three "
    assert not any("END" in d for d in deltas)


def test_a_possible_stop_prefix_is_held_back_until_resolved() -> None:
    asm = TextAssembler(decode, prompt_ids=[], stop=["<|end|>"])
    released = [asm.feed(b) for b in b"ab<|e"]
    assert "".join(released) == "ab"  # "<|e" could start the stop string
    assert asm.feed(ord("x")) == "<|ex"  # it did not
    assert asm.finish() == ""
    assert asm.text == "ab<|ex"


def test_tokens_after_a_stop_are_ignored() -> None:
    asm = TextAssembler(decode, prompt_ids=[], stop=["x"])
    assert asm.feed(ord("a")) == "a"
    assert asm.feed(ord("x")) == ""
    assert asm.stopped
    assert asm.feed(ord("b")) == "" and asm.tokens == 2 and asm.text == "a"


def test_held_back_text_is_released_at_the_end() -> None:
    asm = TextAssembler(decode, prompt_ids=[], stop=["stop"])
    assert [asm.feed(b) for b in b"go st"] == ["g", "o", " ", "", ""]
    assert asm.finish() == "st"
    assert asm.text == "go st"
