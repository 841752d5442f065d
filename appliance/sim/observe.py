"""What the simulator observes during one run, and the run's summary.

Owns: per-request times (arrival, dispatch, completion, rejection, abandonment), the starvation-bound
accounting, swap counts and swap time, and backlog samples. The starvation bound is
measured independently of any scheduler's own bookkeeping, as the issue defines it: from
the moment a request becomes its model's oldest waiting request until it is dispatched,
minus the time its model was being served (had jobs on its engine) and minus its own
swap (its model loading); the remainder must not exceed max_wait + 2L + one release and
wake of every model, L being the longest job running meanwhile.

Must not: drive the simulation or aggregate over seeds.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from dataclasses import dataclass, field

from appliance.sim.workloads import RequestSpec, Workload

HOUR = 3600.0


@dataclass(slots=True)
class _ModelTrack:
    jobs: int = 0
    busy_cum: float = 0.0
    busy_mark: float = 0.0
    loading_since: float | None = None
    activation_cum: float = 0.0
    waiting: list[tuple[float, int, str]] = field(default_factory=list)
    oldest: str | None = None
    oldest_since: float = 0.0
    oldest_marks: tuple[float, float] = (0.0, 0.0)

    def busy_at(self, now: float) -> float:
        return self.busy_cum + (now - self.busy_mark if self.jobs > 0 else 0.0)

    def activation_at(self, now: float) -> float:
        extra = now - self.loading_since if self.loading_since is not None else 0.0
        return self.activation_cum + extra


@dataclass(frozen=True, slots=True)
class RunSummary:
    latency: dict[str, list[float]]
    own_service: list[float]
    swaps_per_hour: float
    gb_moved_per_hour: float
    swap_time_fraction: float
    swap_stall_fraction: float  # of which no job ran: the GPU waited for the swap
    starvation_max_s: float
    starvation_violations: int
    unstable: bool
    rejected: int
    abandoned: int  # failed when their engine was stopped at a drain deadline
    incomplete: int
    backlog_mean: float


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile of a list (q in 0..100); nan when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Observations:
    def __init__(self, workload: Workload, models: list[str]) -> None:
        self.w = workload
        self.t = {m: _ModelTrack() for m in models}
        self.arrival: dict[str, float] = {}
        self.cls: dict[str, str] = {}
        self.work: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.queued: set[str] = set()
        self.job_start: dict[str, float] = {}
        self.first_dispatch: dict[str, float] = {}  # when each request first got its engine
        self.jobs_done: list[tuple[float, float]] = []
        self.episodes: list[tuple[str, float, float, float]] = []  # model, t0, t1, remainder
        self.n_rejected = 0
        self.abandoned_ids: set[str] = set()
        self.backlog = 0
        self.backlog_samples: list[tuple[float, int]] = []
        self.swaps = 0
        self.moved_bytes = 0
        self.transitions = 0
        self.swap_mark = 0.0
        self.swap_time = 0.0
        self.stall_time = 0.0
        self.running = 0
        self.seq = 0
        self.end = 0.0
        self.aborted = False

    def at(self, now: float) -> None:
        self.end = now

    # ------------------------------------------------------------ requests

    def arrived(self, spec: RequestSpec, now: float) -> None:
        self.arrival[spec.id] = now
        self.cls[spec.id] = spec.model
        self.work[spec.id] = spec.work_s
        self.backlog += 1
        self._enqueue(spec.model, spec.id, now, now)

    def _enqueue(self, model: str, rid: str, arrival: float, now: float) -> None:
        tr = self.t[model]
        self.seq += 1
        self.queued.add(rid)
        heapq.heappush(tr.waiting, (arrival, self.seq, rid))
        self._refresh_oldest(model, now)

    def _refresh_oldest(self, model: str, now: float) -> None:
        tr = self.t[model]
        while tr.waiting and tr.waiting[0][2] not in self.queued:
            heapq.heappop(tr.waiting)
        head = tr.waiting[0][2] if tr.waiting else None
        if head != tr.oldest:
            tr.oldest = head
            tr.oldest_since = now
            tr.oldest_marks = (tr.busy_at(now), tr.activation_at(now))

    def _leave_queue(self, model: str, rid: str, now: float) -> None:
        tr = self.t[model]
        if tr.oldest == rid and rid in self.arrival and self.arrival[rid] >= self.w.warmup_s:
            busy0, act0 = tr.oldest_marks
            waited = now - tr.oldest_since
            remainder = waited - (tr.busy_at(now) - busy0) - (tr.activation_at(now) - act0)
            self.episodes.append((model, tr.oldest_since, now, remainder))
        self.queued.discard(rid)
        self._refresh_oldest(model, now)

    def dispatched(self, rid: str, model: str, now: float) -> None:
        self._leave_queue(model, rid, now)
        self._jobs_change(model, now, +1)
        self.job_start[rid] = now
        self.first_dispatch.setdefault(rid, now)

    def done(self, rid: str, model: str, now: float) -> None:
        self._jobs_change(model, now, -1)
        self.jobs_done.append((self.job_start.pop(rid), now))
        self.finished[rid] = now
        self.backlog -= 1

    def preempted(self, rid: str, model: str, now: float) -> None:
        self._jobs_change(model, now, -1)
        self.jobs_done.append((self.job_start.pop(rid), now))
        self._enqueue(model, rid, self.arrival[rid], now)

    def abandoned(self, rid: str, model: str, now: float) -> None:
        """A running request failed: its engine was stopped at a drain deadline."""
        self._jobs_change(model, now, -1)
        self.jobs_done.append((self.job_start.pop(rid), now))
        self.abandoned_ids.add(rid)
        self.backlog -= 1

    def rejected(self, rid: str, status: int, now: float) -> None:
        self.n_rejected += 1
        self.backlog -= 1
        model = self.cls[rid]
        self._leave_queue(model, rid, now)
        self.arrival.pop(rid, None)

    def _jobs_change(self, model: str, now: float, delta: int) -> None:
        self._swap_clock(now)
        self.running += delta
        tr = self.t[model]
        tr.busy_cum = tr.busy_at(now)
        tr.busy_mark = now
        tr.jobs += delta

    # --------------------------------------------------------- transitions

    def transition_start(self, model: str, now: float, activation: bool, moved: int, counts: bool = True) -> None:
        """`counts`: False for the second stage of a staged wake (the swap was counted at its prefetch)."""
        self._swap_clock(now)
        self.transitions += 1
        if activation:
            self.t[model].loading_since = now
            if counts and self.w.warmup_s <= now < self.w.horizon_s:
                self.swaps += 1
                self.moved_bytes += moved

    def transition_end(self, model: str, now: float, activation: bool) -> None:
        self._swap_clock(now)
        self.transitions -= 1
        tr = self.t[model]
        if activation and tr.loading_since is not None:
            tr.activation_cum += now - tr.loading_since
            tr.loading_since = None

    def _swap_clock(self, now: float) -> None:
        if self.transitions > 0:
            lo = max(self.swap_mark, self.w.warmup_s)
            hi = min(now, self.w.horizon_s)
            if hi > lo:
                self.swap_time += hi - lo
                if self.running == 0:
                    self.stall_time += hi - lo
        self.swap_mark = now

    def sample_backlog(self, when: float) -> None:
        self.backlog_samples.append((when, self.backlog))

    def finish(self, now: float, aborted: bool) -> None:
        self.end = now
        self.aborted = aborted

    # ------------------------------------------------------------- summary

    def summary(self, max_wait: dict[str, float], swap_term_s: float) -> RunSummary:
        w = self.w
        latency: dict[str, list[float]] = {}
        own: list[float] = []
        incomplete = abandoned = 0
        for rid, arrival in self.arrival.items():
            if not (w.warmup_s <= arrival < w.horizon_s):
                continue
            if rid in self.abandoned_ids:
                abandoned += 1
                continue
            own.append(self.work[rid])
            end = self.finished.get(rid)
            if end is None:
                incomplete += 1
                continue
            latency.setdefault(self.cls[rid], []).append(end - arrival)
        window_h = (w.horizon_s - w.warmup_s) / HOUR
        worst, violations = self._starvation(max_wait, swap_term_s)
        samples = [n for t, n in self.backlog_samples if t >= w.warmup_s]
        return RunSummary(
            latency=latency,
            own_service=own,
            swaps_per_hour=self.swaps / window_h,
            gb_moved_per_hour=self.moved_bytes / 1e9 / window_h,
            swap_time_fraction=self.swap_time / (w.horizon_s - w.warmup_s),
            swap_stall_fraction=self.stall_time / (w.horizon_s - w.warmup_s),
            starvation_max_s=worst,
            starvation_violations=violations,
            unstable=self.aborted or _growing(samples),
            rejected=self.n_rejected,
            abandoned=abandoned,
            incomplete=incomplete,
            backlog_mean=sum(samples) / len(samples) if samples else 0.0,
        )

    def _starvation(self, max_wait: dict[str, float], swap_term_s: float) -> tuple[float, int]:
        """Longest remainder seen, and how many exceed max_wait + 2L + the swap term."""
        worst = 0.0
        violations = 0
        jobs = sorted(self.jobs_done)
        starts = [s for s, _ in jobs]
        longest_job = max((e - s for s, e in jobs), default=0.0)
        for model, t0, t1, remainder in self.episodes:
            worst = max(worst, remainder)
            base = max_wait.get(model, 0.0) + swap_term_s
            if remainder <= base + 1e-6:
                continue
            lo = bisect_left(starts, t0 - longest_job)
            hi = bisect_left(starts, t1)
            longest = max((e - s for s, e in jobs[lo:hi] if e > t0), default=0.0)
            if remainder > base + 2 * longest + 1e-6:
                violations += 1
        return worst, violations


def _growing(samples: list[int]) -> bool:
    """Backlog grows when the last third of the window holds clearly more than the first."""
    if len(samples) < 6:
        return False
    third = len(samples) // 3
    first = sum(samples[:third]) / third
    last = sum(samples[-third:]) / third
    return last > max(2.0 * first, first + 10.0)
