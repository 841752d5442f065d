"""The discrete-event simulator: drives a scheduler with virtual time over a workload.

Owns: the event heap (arrivals, job completions, finished transitions, ticks), the
execution of the scheduler's actions on the simulated GPU with the durations of the
policy's mechanism, the checks that every action is legal (dispatch only to a resident
model, never release a model with jobs on it unless a ForceStop abandons them, VRAM never
over budget at any event),
and the raw observations the metrics are computed from.

Must not: make residency decisions (the scheduler does) or compute statistics over
seeds (bench does). Any scheduler with `handle(event) -> actions` and `next_deadline()`
can be driven, the pure core and the baselines alike.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from appliance.scheduler.events import (
    Action,
    Dispatch,
    EngineReady,
    Event,
    ForceStop,
    Preempt,
    Prefetch,
    Prefetched,
    Reject,
    ReleaseDone,
    RequestArrived,
    RequestDone,
    Sleep,
    Start,
    Stop,
    Tick,
    Unload,
    Wake,
)
from appliance.scheduler.types import Request
from appliance.sim.calibration import Calibration
from appliance.sim.gpu import Gpu, Job
from appliance.sim.mechanism import Mechanism, transition_s
from appliance.sim.observe import Observations
from appliance.sim.workloads import RequestSpec, Workload

ARRIVAL, GPU, READY, RELEASED, TICK, PREFETCHED, DROPPED = range(7)
BACKLOG_SAMPLE_S = 300.0
EVENTS_PER_REQUEST = 200


class Scheduler(Protocol):
    def handle(self, event: Event) -> list[Action]: ...

    def next_deadline(self) -> float | None: ...


class SimulationError(RuntimeError):
    """The scheduler asked for something illegal (an invariant broke)."""


@dataclass(slots=True)
class _Residency:
    state: str = "disk"  # disk | host | prefetching | staged | vram | loading | releasing
    engine_up: bool = False
    release_to: str = "disk"
    staged: bool = False  # only its weights are in VRAM (prefetching, staged, or stopping from there)


@dataclass(slots=True)
class SimConfig:
    mechanism: Mechanism
    time_sliced: bool = True
    check_budget: bool = True
    initial_state: dict[str, str] = field(default_factory=dict)  # model -> "host" | "vram"
    abort_backlog: int | None = None


class Simulation:
    def __init__(self, workload: Workload, scheduler: Scheduler, cal: Calibration, config: SimConfig) -> None:
        self.w = workload
        self.sched = scheduler
        self.cal = cal
        self.cfg = config
        self.gpu = Gpu(cal, time_sliced=config.time_sliced)
        self.res = {m.id: _Residency() for m in cal.models}
        for model, state in config.initial_state.items():
            self.res[model] = _Residency(state=state, engine_up=True)
        self.size = {m.id: m.size_bytes for m in cal.models}
        self.footprint = {m.id: cal.vram_bytes(m.id) for m in cal.models}
        self.weights = {m.id: cal.prefetch_bytes(m.id) for m in cal.models}
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.now = 0.0
        self.specs: dict[str, RequestSpec] = {}
        self.jobs: dict[str, Job] = {}
        self.pending_tick: float | None = None
        self.obs = Observations(workload, [m.id for m in cal.models])
        self.aborted = False

    # ------------------------------------------------------------------ driving

    def _push(self, t: float, kind: int, data: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    def run(self) -> Observations:
        for spec in self.w.roots:
            self._push(spec.arrival, ARRIVAL, spec)
        next_sample = BACKLOG_SAMPLE_S
        budget = EVENTS_PER_REQUEST * len(self.w.all_specs()) + 10_000
        while self.heap:
            budget -= 1
            if budget < 0:
                raise SimulationError(f"no progress: over {EVENTS_PER_REQUEST} events per request (livelock)")
            t, _, kind, data = heapq.heappop(self.heap)
            while t >= next_sample and next_sample <= self.w.horizon_s:
                self.obs.sample_backlog(next_sample)
                next_sample += BACKLOG_SAMPLE_S
            self.now = t
            self.obs.at(t)
            if kind == ARRIVAL:
                assert isinstance(data, RequestSpec)
                self._arrive(data)
            elif kind == GPU:
                if data == self.gpu.version:
                    for job in self.gpu.complete_due(t):
                        self._job_done(job)
            elif kind == READY:
                assert isinstance(data, str)
                self.res[data].state = "vram"
                self.obs.transition_end(data, t, activation=True)
                self._feed(EngineReady(t, data))
            elif kind == PREFETCHED:
                assert isinstance(data, str)
                self.res[data].state = "staged"
                self.obs.transition_end(data, t, activation=True)
                self._feed(Prefetched(t, data))
            elif kind == RELEASED:
                assert isinstance(data, str)
                r = self.res[data]
                r.state, r.staged = r.release_to, False
                self.obs.transition_end(data, t, activation=False)
                self._feed(ReleaseDone(t, data, 0))
            elif kind == DROPPED:  # a host copy dropped: no VRAM moved, no transition observed
                assert isinstance(data, str)
                self._feed(ReleaseDone(t, data, 0))
            elif kind == TICK:
                if self.pending_tick == t:
                    self.pending_tick = None
                self._feed(Tick(t))
            if self.cfg.abort_backlog is not None and self.obs.backlog > self.cfg.abort_backlog:
                self.aborted = True
                break
        self.obs.finish(self.now, self.aborted)
        return self.obs

    def _arrive(self, spec: RequestSpec) -> None:
        self.specs[spec.id] = spec
        self.obs.arrived(spec, self.now)
        request = Request(spec.id, spec.model, self.now)
        self._feed(RequestArrived(self.now, request))

    def _job_done(self, job: Job) -> None:
        self.jobs.pop(job.rid, None)
        self.obs.done(job.rid, job.model, self.now)
        spec = self.specs.pop(job.rid)
        for follow in spec.follow:
            at = self.now + follow.arrival
            if at < self.w.horizon_s:
                self._push(at, ARRIVAL, follow)
        self._feed(RequestDone(self.now, job.rid))

    def _feed(self, event: Event) -> None:
        actions = self.sched.handle(event)
        self._execute(actions)
        deadline = self.sched.next_deadline()
        if deadline is not None and deadline > self.now and (self.pending_tick is None or deadline < self.pending_tick):
            self.pending_tick = deadline
            self._push(deadline, TICK, None)
        nxt = self.gpu.next_completion()
        if nxt is not None:
            self._push(max(nxt, self.now), GPU, self.gpu.version)

    # --------------------------------------------------------------- actions

    def _execute(self, actions: Sequence[Action]) -> None:
        for action in actions:
            match action:
                case Dispatch(model=model, request_id=rid):
                    self._dispatch(model, rid)
                case Start() | Wake():
                    self._activate(action)
                case Prefetch():
                    self._prefetch(action)
                case Sleep() | Unload() | Stop():
                    self._release(action)
                case ForceStop(model=model, abandoned=rids):
                    for rid in rids:
                        self.gpu.abandon(model, rid, self.now)
                        self.jobs.pop(rid, None)
                        self.specs.pop(rid)  # its follow-ups never come: the answer failed
                        self.obs.abandoned(rid, model, self.now)
                    self._release(Stop(model))
                case Reject(request_id=rid, status=status):
                    self.specs.pop(rid, None)
                    self.obs.rejected(rid, status, self.now)
                case Preempt(model=model, request_id=rid):
                    self.jobs[rid] = self.gpu.preempt(model, rid, self.now)
                    self.obs.preempted(rid, model, self.now)

    def _dispatch(self, model: str, rid: str) -> None:
        if self.res[model].state != "vram":
            raise SimulationError(f"dispatch of {rid} to {model} in state {self.res[model].state}")
        job = self.jobs.pop(rid, None)
        if job is None:
            spec = self.specs[rid]
            llm = self.cal.llm
            if model == "llm":
                prefill = spec.prompt_tokens / llm.prefill_tps
                job = Job(rid, model, prefill, spec.work_s - prefill, spec.prompt_tokens, spec.output_tokens,
                          spec.prompt_tokens + spec.output_tokens)
            else:
                job = Job(rid, model, 0.0, spec.work_s, 0, 0, 0)
        self.jobs[rid] = job
        self.obs.dispatched(rid, model, self.now)
        self.gpu.submit(job, self.now)

    def _activate(self, action: Start | Wake) -> None:
        r = self.res[action.model]
        staged = r.state == "staged"
        if r.state not in ("disk", "host") and not (staged and isinstance(action, Wake)):
            raise SimulationError(f"{action!r} while {action.model} is {r.state}")
        duration = transition_s(self.cfg.mechanism, self.cal, action, r.engine_up, staged)
        r.state, r.engine_up, r.staged = "loading", True, False
        self._check_budget(action)
        moved = 0 if staged else self.size[action.model]
        self.obs.transition_start(action.model, self.now, activation=True, moved=moved, counts=not staged)
        self._push(self.now + duration, READY, action.model)

    def _prefetch(self, action: Prefetch) -> None:
        r = self.res[action.model]
        if r.state != "host" or not self.weights[action.model]:
            raise SimulationError(f"{action!r} while {action.model} is {r.state}")
        duration = transition_s(self.cfg.mechanism, self.cal, action, r.engine_up)
        r.state, r.staged = "prefetching", True
        self._check_budget(action)
        self.obs.transition_start(action.model, self.now, activation=True, moved=self.size[action.model])
        self._push(self.now + duration, PREFETCHED, action.model)

    def _release(self, action: Sleep | Unload | Stop) -> None:
        r = self.res[action.model]
        if r.state == "host":  # dropping a host copy frees no VRAM; the scheduler hears it is done
            r.state = "disk"
            r.engine_up = not isinstance(action, Stop)
            self._push(self.now, DROPPED, action.model)
            return
        if r.staged and not isinstance(action, Stop):
            raise SimulationError(f"{action!r} while {action.model} is half awake: it can only be stopped")
        if r.state not in ("vram", "staged"):
            raise SimulationError(f"{action!r} while {action.model} is {r.state}")
        if self.gpu.engines[action.model].has_jobs():
            raise SimulationError(f"{action!r} while {action.model} has jobs in flight")
        duration = transition_s(self.cfg.mechanism, self.cal, action, r.engine_up)
        r.state = "releasing"
        r.release_to = "host" if isinstance(action, Sleep) else "disk"
        r.engine_up = not isinstance(action, Stop)
        self.obs.transition_start(action.model, self.now, activation=False, moved=0)
        self._push(self.now + duration, RELEASED, action.model)

    def _check_budget(self, action: Action) -> None:
        if not self.cfg.check_budget:
            return
        used = sum(
            self.weights[m] if r.staged else self.footprint[m]
            for m, r in self.res.items()
            if r.state in ("vram", "loading", "releasing", "prefetching", "staged")
        )
        if used > self.cal.vram_budget_bytes:
            raise SimulationError(f"{action!r} puts VRAM at {used} bytes over the budget")


def run(workload: Workload, scheduler: Scheduler, cal: Calibration, config: SimConfig) -> Observations:
    return Simulation(workload, scheduler, cal, config).run()
