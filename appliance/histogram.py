"""A Prometheus-style histogram kept by hand: fixed buckets, a sum and a count.

Owns `Histogram`. An observation costs one bisect and three additions, with no lock and no label
lookup (prometheus-client's own metric objects cost several times that per call); `metrics`
turns it into a histogram family at scrape time.
Must not: know metric names or labels.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from functools import cache
from itertools import accumulate


@dataclass(slots=True)
class Histogram:
    """Cumulative-on-read bucket counts, a sum and a count (Prometheus' histogram, kept by hand:
    an observation costs one bisect, no lock and no label lookup)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound as Prometheus writes it, cumulative count)], ending with +Inf."""
        return list(zip(_les(self.bounds), accumulate(self.counts), strict=True))


@cache
def _les(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return (*(repr(b) for b in bounds), "+Inf")
