"""Cutting text into overlapping chunks, by OpenAI's `chunking_strategy` (auto, or static with
`max_chunk_size_tokens` and `chunk_overlap_tokens`), counted in tokens.

What a token is comes from outside as a function (text in, the character offsets of its tokens out;
appliance.vectors.tokens gives the embedding model's own tokenizer), so `chunk` stays pure. `auto` is
OpenAI's 800 tokens with 400 overlapping, made smaller for an embedding model that reads fewer tokens per
input (`auto_for`: all-MiniLM-L6-v2 reads 254, so its auto chunks are 254 with 127 overlapping; a longer
chunk would be embedded from its beginning only). The static limits are OpenAI's: 100..4096 tokens, an
overlap of at most half the chunk. Pure.
It must not parse files, load a tokenizer nor embed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AUTO_MAX, AUTO_OVERLAP = 800, 400  # OpenAI's auto strategy
Spans = Callable[[str], list[tuple[int, int]]]  # text -> the (start, end) character offsets of its tokens


class ChunkingError(ValueError):
    """A bad `chunking_strategy`; the message names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class Strategy:
    auto: bool
    max_tokens: int
    overlap: int

    def view(self) -> dict[str, Any]:
        """What a vector store file reports (OpenAI reports an auto strategy as the static one it used)."""
        return {"type": "static", "static": {"max_chunk_size_tokens": self.max_tokens,
                                             "chunk_overlap_tokens": self.overlap}}


AUTO = Strategy(True, AUTO_MAX, AUTO_OVERLAP)


def auto_for(window: int | None) -> Strategy:
    """The auto strategy for a model that embeds `window` tokens per input (None: unknown): OpenAI's
    800/400, or the model's window with half of it overlapping when that is smaller."""
    if window is None or window >= AUTO_MAX:
        return AUTO
    size = max(1, window)
    return Strategy(True, size, size // 2)


def parse_strategy(value: object, param: str = "chunking_strategy") -> Strategy:
    if value is None:
        return AUTO
    if not isinstance(value, dict) or value.get("type") not in ("auto", "static"):
        raise ChunkingError(f"{param}.type", "must be \"auto\" or \"static\"")
    if value["type"] == "auto":
        if set(value) - {"type"}:
            raise ChunkingError(param, "an auto strategy takes no other fields")
        return AUTO
    static = value.get("static")
    if not isinstance(static, dict):
        raise ChunkingError(f"{param}.static", "is required with type \"static\"")
    size, overlap = static.get("max_chunk_size_tokens"), static.get("chunk_overlap_tokens")
    if type(size) is not int or not 100 <= size <= 4096:
        raise ChunkingError(f"{param}.static.max_chunk_size_tokens", "must be an integer from 100 to 4096")
    if type(overlap) is not int or not 0 <= overlap <= size // 2:
        raise ChunkingError(f"{param}.static.chunk_overlap_tokens",
                            "must be an integer from 0 to half of max_chunk_size_tokens")
    return Strategy(False, size, overlap)


def chunk(text: str, strategy: Strategy, spans: Spans) -> list[str]:
    """Windows of `max_tokens` tokens (as `spans` finds them), each starting `max_tokens - overlap` after
    the previous; each chunk is the original text from its first token's start to its last token's end."""
    offsets = spans(text)
    if not offsets:
        return []
    step = strategy.max_tokens - strategy.overlap
    out: list[str] = []
    start = 0
    while True:
        end = min(start + strategy.max_tokens, len(offsets))
        out.append(text[offsets[start][0]:offsets[end - 1][1]])
        if end == len(offsets):
            return out
        start += step
