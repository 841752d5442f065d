"""Observed service durations of a model, for estimating how long a drain will take.

Owns: a bounded sample of recent dispatch-to-done durations per model and the expected
residual of a running job given how long it has run: E[D - a | D > a] over the sample.
LLM output lengths are heavy-tailed, so a stream that has already run long is expected
to run long still; a fixed per-request estimate gets this backwards.

Must not: read a clock; durations are computed by the core from event times.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque

SAMPLE_SIZE = 256


class ServiceHistory:
    def __init__(self, prior_s: float, size: int = SAMPLE_SIZE) -> None:
        self.prior_s = prior_s
        self._recent: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []
        self._suffix: list[float] = [0.0]
        self._dirty = False  # suffix sums are rebuilt when read, not on every completed request

    def __len__(self) -> int:
        return len(self._recent)

    def record(self, duration_s: float) -> None:
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            del self._sorted[bisect_right(self._sorted, old) - 1]
        self._recent.append(duration_s)
        insort(self._sorted, duration_s)
        self._dirty = True

    def _sums(self) -> list[float]:
        if self._dirty:
            suffix = [0.0] * (len(self._sorted) + 1)
            for i in range(len(self._sorted) - 1, -1, -1):
                suffix[i] = suffix[i + 1] + self._sorted[i]
            self._suffix, self._dirty = suffix, False
        return self._suffix

    def mean(self) -> float:
        return self._sums()[0] / len(self._sorted) if self._sorted else self.prior_s

    def residual(self, elapsed_s: float) -> float:
        """Expected remaining seconds of a job that has run `elapsed_s` (prior until observed)."""
        if not self._sorted:
            return max(self.prior_s - elapsed_s, 0.0)
        i = bisect_right(self._sorted, elapsed_s)
        longer = len(self._sorted) - i
        if longer == 0:
            return 0.0
        return self._sums()[i] / longer - elapsed_s
