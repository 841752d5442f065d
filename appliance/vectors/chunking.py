"""Cutting text into overlapping chunks, by OpenAI's `chunking_strategy` (auto, or static with
`max_chunk_size_tokens` and `chunk_overlap_tokens`).

A token here is a word or a punctuation mark (the daemon has no tokenizer; a sub-word tokenizer makes
somewhat more of them). `auto` is 200 tokens with 50 overlapping, sized for the embedding models the
box ships (they read 256 word pieces; a longer chunk is embedded from its beginning). The static
limits are OpenAI's: 100..4096 tokens, an overlap of at most half the chunk. Pure.
It must not parse files nor embed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

AUTO_MAX, AUTO_OVERLAP = 200, 50
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


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


def chunk(text: str, strategy: Strategy) -> list[str]:
    """Windows of `max_tokens` tokens, each starting `max_tokens - overlap` after the previous; each
    chunk is the original text between its first and last token (whitespace kept)."""
    spans = [m.span() for m in _TOKEN.finditer(text)]
    if not spans:
        return []
    step = strategy.max_tokens - strategy.overlap
    out: list[str] = []
    start = 0
    while True:
        end = min(start + strategy.max_tokens, len(spans))
        out.append(text[spans[start][0]:spans[end - 1][1]])
        if end == len(spans):
            return out
        start += step
