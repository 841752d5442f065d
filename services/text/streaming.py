"""Token ids to text deltas, for streamed and whole completions.

Owns incremental detokenisation (decode a short window, emit only what is new, never half a UTF-8
character) and stop strings (hold back text that may be the start of a stop string; cut at the first
match). Pure: it takes a `decode` function and never imports a tokenizer library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]
_CONTEXT_TOKENS = 5  # prompt tokens decoded with the output, so leading-space rules see a real prefix


class TextAssembler:
    def __init__(self, decode: Decode, prompt_ids: Sequence[int], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stops = [s for s in stop if s]
        self._pending = ""  # decoded but not yet released (may start a stop string)
        self.text = ""  # released so far
        self.tokens = 0
        self.stopped = False

    def feed(self, token_id: int) -> str:
        """Add one generated token; return the text that can be released now."""
        if self.stopped:
            return ""
        self.tokens += 1
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing new yet, or an incomplete UTF-8 sequence
        self._pending += after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The end of generation: release everything still held back."""
        if self.stopped:
            return ""
        tail = self._decode(self._ids[self._prefix :])
        before = self._decode(self._ids[self._prefix : self._read])
        if len(tail) > len(before):
            self._pending += tail[len(before) :].rstrip("\ufffd")
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        # Released text never ends with a proper prefix of a stop string (that part is held back), so a
        # match can only start inside the pending text.
        found = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if found:
            released = self._pending[: min(found)]
            self.stopped = True
            self._pending = ""
            self.text += released
            return released
        hold = 0 if final else self._held_back(self._pending)
        keep_from = len(self._pending) - hold
        released, self._pending = self._pending[:keep_from], self._pending[keep_from:]
        self.text += released
        return released

    def _held_back(self, pending: str) -> int:
        """Length of the longest suffix of `pending` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(pending)), 0, -1):
                if pending.endswith(stop[:n]):
                    longest = max(longest, n)
                    break
        return longest
