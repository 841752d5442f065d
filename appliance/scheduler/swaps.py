"""What the GPU did over time: swaps, the stall, dispatches and resumes, as running totals.

Owns: `SwapMeter`, kept by the residency manager, which tells it when a swap begins and ends and
when a job starts and stops holding the GPU. From those it keeps, per (model, kind), how many
swaps finished, how many failed and a histogram of their durations; the stall (seconds during
which at least one swap was in progress and no job ran: the GPU waited for the swap); and how
many requests were resumed after a preemption. `metrics` reads it at scrape time.

Swap kinds and their direction: `cold_start`, `wake` (from host RAM), `load` (into a running
process) go `in`; `sleep` (to host RAM), `offload` (weights dropped, process kept), `stop` go `out`.

Must not: read a clock of its own (the caller passes its clock), do I/O, or decide anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..histogram import Histogram

DIRECTION = {"cold_start": "in", "wake": "in", "load": "in", "sleep": "out", "offload": "out", "stop": "out"}
SWAP_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(slots=True)
class SwapStats:
    done: int = 0
    failed: int = 0
    seconds: Histogram = field(default_factory=lambda: Histogram(SWAP_BUCKETS_S))


@dataclass(frozen=True, slots=True)
class Swap:
    """A swap in progress (what `begin` returns and `end` takes)."""

    model: str
    kind: str
    began: float


class SwapMeter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.swaps: dict[tuple[str, str], SwapStats] = {}  # (model, kind) -> totals
        self.resumes: dict[str, int] = {}  # model -> requests dispatched again after a preemption
        self._swapping = 0
        self._running: set[str] = set()  # request ids holding the GPU now
        self._stall_s = 0.0
        self._mark = clock()

    def _advance(self) -> float:
        now = self._clock()
        if self._swapping and not self._running:
            self._stall_s += max(0.0, now - self._mark)
        self._mark = now
        return now

    def begin(self, model: str, kind: str) -> Swap:
        if kind not in DIRECTION:
            raise ValueError(f"unknown swap kind {kind!r}")
        now = self._advance()
        self._swapping += 1
        return Swap(model, kind, now)

    def end(self, swap: Swap, ok: bool = True) -> None:
        now = self._advance()
        self._swapping = max(0, self._swapping - 1)
        stats = self.swaps.get((swap.model, swap.kind))
        if stats is None:
            stats = self.swaps[(swap.model, swap.kind)] = SwapStats()
        stats.done += 1
        if not ok:
            stats.failed += 1
        stats.seconds.observe(max(0.0, now - swap.began))

    def job_started(self, request_id: str, model: str, resume: bool = False) -> None:
        self._advance()
        self._running.add(request_id)
        if resume:
            self.resumes[model] = self.resumes.get(model, 0) + 1

    def job_stopped(self, request_id: str) -> None:
        """The request finished or was preempted; stopping one that is not running is a no-op."""
        if request_id in self._running:
            self._advance()
            self._running.discard(request_id)

    def stall_s(self) -> float:
        """Seconds so far with a swap in progress and no job running, the current stretch included."""
        extra = 0.0
        if self._swapping and not self._running:
            extra = max(0.0, self._clock() - self._mark)
        return self._stall_s + extra

    def now(self) -> float:
        """The owner's clock (the one queue arrivals are stamped with)."""
        return self._clock()

    @property
    def swapping(self) -> int:
        return self._swapping

    @property
    def running(self) -> int:
        return len(self._running)
