"""The residency manager: the one asyncio task that owns the pure `ResidencyCore`.

It feeds the core events (requests arriving and finishing, engines ready or crashed, releases
verified, GPU samples, ticks at the core's deadlines) from one queue, and executes the actions the
core returns through the engines: Start/Wake -> start the process if needed and activate;
Sleep/Unload -> `release(tier)`; Stop -> staged stop; ForceStop (a victim still busy at its drain
deadline, `scheduler.drain_deadline_s`) -> staged stop of the busy engine. Every release is verified against the GPU
probe: the engine's process group must actually drop its memory before `ReleaseDone`; a release
that misses `scheduler.release_deadline_s` is reported failed, and the core escalates to Stop
(SIGTERM, grace, SIGKILL of the group).

Operator controls (the web UI's Models page): `load(model)` takes a lease like any request and lets it
go (the core decides how the model comes in); `pin` and `release` post `OperatorPin` and
`OperatorRelease` to the core, which alone decides what they change. A pin lasts until unpinned or
the daemon restarts (`models.NAME.pinned` in the configuration is the lasting one).

The gateway uses `lease(model)`: it waits in the model's queue and yields the engine's loopback URL
once dispatched; leaving the block (completion, error, client disconnect) tells the core.

Stream preemption (`scheduler.preemption`): a lease taken with `preemptible=True` on a text
model served by vLLM or the text worker (`resumable_engine`) carries a `Preemption`. When the
core preempts the request, the manager asks the holder to abort its engine connection, waits (at
most `ABORT_WAIT_S`) until every aborted stream of the model is closed before releasing the engine,
and the holder's `preemption.resume()` waits for the core to dispatch the request again (it is
queued first, with resume=True).

`generation` counts residency changes (a model's tier or transition phase, a CPU model's engine
coming up or going down): a reader comparing two values knows whether anything moved between them
(the fleet's residency summary, appliance.fleet.summary).

Engine lifecycle: the supervisor reports every process transition of a scheduled engine to
`_on_transition` synchronously, as a typed `Transition` (never over the EventBus, which may drop
events and is telemetry only); `lifecycle.react` says what it means (a lost process -> EngineExited,
an unasked READY -> park, FATAL -> answer the waiting requests with 503 and the cool-down).
Who restarts a scheduled engine: this manager, and only when the core issues Start or Wake for one
of its models (`ensure_ready`). The supervisor never restarts a scheduled engine by itself (its
`autorestart` is switched off here, at construction) but paces the starts: a start waits out the
backoff after a crash, and is refused while the engine is FATAL until `restart.fatal_retry_s` has
passed; a lease for a model of a FATAL engine is refused at once with 503 and that Retry-After.

It must not decide anything itself: every residency decision is the core's. Nor does it translate
configuration (`profiles.py`), split measured memory between models (`attribution.py`) or format
its state files (`statefile.py`): it only owns the core's task and executes its actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog import Catalog
from ..config import Config
from ..engines.engine import Engine
from ..events import Event as BusEvent
from ..events import EventBus
from ..gpu import GpuProbe
from ..residency import (
    CannotFitError,
    DirectResidency,
    Lease,
    ModelUnavailable,
    NotResident,
    Preemption,
    QueueFullError,
    weights_missing,
)
from ..supervisor.process import EngineUnavailable
from ..supervisor.states import ProcessState, Transition
from .attribution import attribute_usage
from .core import ResidencyCore
from .events import (
    Action,
    ActionFailed,
    ActionKind,
    CostsMeasured,
    Dispatch,
    EngineExited,
    EngineReady,
    Event,
    ForceStop,
    GpuSample,
    OperatorPin,
    OperatorRelease,
    Preempt,
    Prefetch,
    Prefetched,
    Reject,
    ReleaseDone,
    RequestArrived,
    RequestCancelled,
    RequestDone,
    Sleep,
    Start,
    Stop,
    Tick,
    Unload,
    Wake,
)
from .lifecycle import react
from .memory import MemoryBudget
from .policy import PolicySettings
from .profiles import profile_for, runs_on_cpu
from .statefile import StateFile
from .swaps import SwapMeter
from .timings import TransitionTimes
from .types import Request, Tier
from .waiting import WaitEstimate, estimate

if TYPE_CHECKING:
    from ..store.state_doc import StateDoc

log = logging.getLogger("appliance.residency")

GIB = 1 << 30
PREFETCH_MARGIN_BYTES = 512 << 20
"""Left free beyond a prefetch's weights, by measurement, for the working model's peak."""
RELEASE_POLL_S = 0.05
ABORT_WAIT_S = 5.0  # how long a release waits for preempted streams to close their engine connection


@dataclass
class _Waiter:
    model: str
    future: asyncio.Future[Lease]
    preemption: Preemption | None = None


class ResidencyManager:
    def __init__(self, config: Config, engines: dict[str, Engine], gpu: GpuProbe, bus: EventBus,
                 state_dir: Path, clock: Callable[[], float] | None = None,
                 catalog: Catalog | None = None, state_docs: tuple[StateDoc, StateDoc] | None = None) -> None:
        """`catalog`: where models' weights are looked up (for prefetch) when the configuration
        does not give them. `state_docs`: where footprints and transition times are kept (the
        store); default: JSON files under `state_dir/data`."""
        self.config = config
        self.engines = engines
        self.gpu = gpu
        self.bus = bus
        self.model_engine = {mid: m.engine for mid, m in config.models.items() if m.engine in engines}
        self.footprint_file, self.timings_file = state_docs or (
            StateFile(state_dir / "data" / "footprints.json"), StateFile(state_dir / "data" / "transitions.json"))
        self.timings = TransitionTimes.from_mapping(self.timings_file.load())
        snap = gpu.snapshot()
        # Models whose worker runs on the CPU take no GPU memory: they bypass the GPU scheduler.
        self.cpu_models = {mid for mid, eng in self.model_engine.items()
                           if runs_on_cpu(config, eng, has_gpu=snap.kind != "declared")}
        self._direct = DirectResidency(engines, self.model_engine)
        estimated = [
            profile_for(mid, config.models[mid], config, engines[eng].adapter, catalog)
            for mid, eng in self.model_engine.items() if mid not in self.cpu_models
        ]
        self._estimated = {p.id: p for p in estimated}  # measured medians replace their costs
        profiles = [replace(p, costs=self.timings.costs(p.id, p.costs)) for p in estimated]
        budget = MemoryBudget(
            vram_bytes=max(0, snap.total_bytes - int(config.gpu.reserve_gb * GIB)),
            host_bytes=int(config.gpu.host_ram_budget_gb * GIB),
        )
        self.core = ResidencyCore(
            profiles, budget,
            PolicySettings(preemption=config.scheduler.preemption, one_engine_at_a_time=config.scheduler.turn_taking,
                           prefetch=config.scheduler.prefetch, restore=config.scheduler.restore,
                           drain_deadline_s=config.scheduler.drain_deadline_s,
                           max_start_failures=3, failure_backoff_s=1.0),
            measured={str(k): int(v) for k, v in self.footprint_file.load().items()
                      if isinstance(v, int | float) and not isinstance(v, bool)},
        )
        self._clock = clock or time.monotonic
        self.swaps = SwapMeter(self._clock)  # swap counts and durations, the stall, resumes (for metrics)
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._waiters: dict[str, _Waiter] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._expect_ready: set[str] = set()  # engines we are starting: their READY is ours
        self._stopping: set[str] = set()  # engines we are stopping: their STOPPED is ours
        self._preemptible = {p.id for p in profiles if p.preemptible}
        self._aborting: dict[str, list[Preemption]] = {}  # model -> preempted streams not yet awaited
        self.preemptions: dict[str, int] = {}  # model -> streams preempted since start
        self._models_of: dict[str, list[str]] = {}  # scheduled engine -> its models
        self.generation = 0  # bumped on every residency change (see the module docstring)
        self._residency_sig: tuple[tuple[Tier, object], ...] = ()
        for mid, eng_name in self.model_engine.items():
            if mid not in self.cpu_models:
                self._models_of.setdefault(eng_name, []).append(mid)
        for eng_name in self._models_of:
            engines[eng_name].process.set_autorestart(False)  # restarts are ours: see the docstring
            engines[eng_name].process.on_transition(self._on_transition)
        for eng_name in {self.model_engine[mid] for mid in self.cpu_models}:
            engines[eng_name].process.on_transition(self._on_cpu_transition)
        self._note_residency()

    # -- public -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._spawn(self._sample_gpu())

    async def close(self) -> None:
        for t in [self._task, *self._jobs]:
            if t is not None:
                t.cancel()
        for w in self._waiters.values():
            if not w.future.done():
                w.future.set_exception(ModelUnavailable("the daemon is shutting down"))

    def tier(self, model: str) -> str:
        if model in self.cpu_models:
            eng = self.engines[self.model_engine[model]]
            return "host" if eng.state is ProcessState.READY else "disk"
        view = self.core.snapshot().models.get(model)
        return view.tier.value if view is not None else "absent"

    def resident(self, model: str) -> bool:
        """Whether a request for `model` is served without bringing anything in or out: a GPU model
        resident in VRAM and steady (not loading, not being evicted), a CPU model whose engine is up."""
        if model in self.cpu_models:
            return self.engines[self.model_engine[model]].state is ProcessState.READY
        slot = self.core.ledger.slots.get(model)
        return slot is not None and slot.servable

    def loadable(self, model: str) -> bool:
        """Whether `model` could be brought in now: an enabled engine that is not FATAL, weights on
        this box, and (a GPU model) a footprint that fits the VRAM budget beside the pinned models."""
        eng_name = self.model_engine.get(model)
        if eng_name is None:
            return False
        eng = self.engines[eng_name]
        if eng.state is ProcessState.FATAL or eng.adapter.missing_weights():
            return False
        if model in self.cpu_models:
            return True
        slot = self.core.ledger.slots.get(model)
        return slot is not None and slot.tier is not Tier.ABSENT and self.core.ledger.fits_ever(slot)

    def wait_estimate(self, model: str) -> WaitEstimate:
        """Where `model` is, how many wait for it, and about how long it takes to bring in (measured
        medians where this box has them)."""
        profile = self._estimated.get(model)
        if model in self.cpu_models or profile is None:
            up = model in self.cpu_models and self.engines[self.model_engine[model]].state is ProcessState.READY
            return WaitEstimate("host" if up else "disk", 0, 0.0)
        costs = self.timings.costs(model, profile.costs)
        return estimate(self.core.snapshot().models.get(model), costs)

    def snapshot(self) -> dict[str, object]:
        snap = self.core.snapshot()
        timings = self.timings.medians()
        now = self._clock()
        return {
            "vram_used_bytes": snap.vram_used_bytes,
            "vram_budget_bytes": snap.vram_budget_bytes,
            "host_used_bytes": snap.host_used_bytes,
            "host_budget_bytes": snap.host_budget_bytes,
            "switching_to": snap.plan_target,
            "models": {
                mid: {"tier": v.tier.value, "phase": v.phase, "queued": v.queued, "in_flight": v.in_flight,
                      "pinned": self.core.ledger.slots[mid].profile.pinned,
                      "oldest_wait_s": None if v.oldest_arrival is None else round(now - v.oldest_arrival, 3),
                      "footprint_bytes": v.footprint_bytes, "measured": self.core.footprints.is_measured(mid),
                      "host_bytes": self._estimated[mid].host_bytes,
                      "prefetched_bytes": v.prefetched_bytes, "preemptions": self.preemptions.get(mid, 0),
                      "transitions_s": timings.get(mid, {})}
                for mid, v in snap.models.items()
            },
        }

    def _scheduled(self, model: str) -> None:
        if model not in self.model_engine:
            raise ModelUnavailable(f"model {model!r} has no enabled engine", retry_after=60)
        if model in self.cpu_models:
            raise ModelUnavailable(f"model {model!r} runs on the CPU, outside the GPU's residency: "
                                   "start or stop its engine instead", retry_after=60)

    async def load(self, model: str) -> str:
        """Bring `model` into VRAM the way a request does (queued, then dispatched); its new tier."""
        if model in self.cpu_models:
            await self.engines[self.model_engine[model]].process.start()
            return self.tier(model)
        async with self.lease(model):
            pass
        return self.tier(model)

    def pin(self, model: str, pinned: bool) -> None:
        """Pin (kept in VRAM, loaded if absent) or unpin; CannotFitError when the pinned set would not fit."""
        self._scheduled(model)
        if pinned and not self.core.ledger.fits_ever(self.core.ledger.slots[model]):
            raise CannotFitError(f"model {model!r} does not fit in the VRAM budget beside the pinned models",
                                 retry_after=60)
        self._post(OperatorPin(self._clock(), model, pinned))

    def release(self, model: str) -> None:
        """Ask the core to release `model` from VRAM now; a pinned or busy model stays (unpin it first)."""
        self._scheduled(model)
        self._post(OperatorRelease(self._clock(), model))

    @contextlib.asynccontextmanager
    async def lease(self, model: str, *, deadline_s: float | None = None,
                    preemptible: bool = False, resident_only: bool = False) -> AsyncIterator[Lease]:
        """`preemptible`: the caller can abort and resume this request (see the module docstring).
        `resident_only`: served only if the model is resident and steady, else NotResident at once;
        the core decides it when the request arrives, so nothing is loaded or evicted for it."""
        if model not in self.model_engine:
            raise ModelUnavailable(f"model {model!r} has no enabled engine", retry_after=60)
        if model in self.cpu_models:
            async with self._direct.lease(model, deadline_s=deadline_s, resident_only=resident_only) as lease:
                yield lease
            return
        eng = self.engines[self.model_engine[model]]
        if eng.state is ProcessState.FATAL:
            raise self._fatal(model, eng)
        if eng.adapter.missing_weights():
            raise weights_missing(model, self.config.models[model].catalog)
        rid = f"r{next(self._ids)}"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Lease] = loop.create_future()
        preemptible = preemptible and model in self._preemptible
        timeout = deadline_s if deadline_s is not None else self.config.server.load_deadline_s
        waiter = _Waiter(model, fut)
        if preemptible:
            waiter.preemption = Preemption(lambda: self._redispatch(waiter, model, timeout))
        self._waiters[rid] = waiter
        start = self._clock()
        self._post(RequestArrived(start, Request(rid, model, start, preemptible=preemptible,
                                                 resident_only=resident_only)))
        dispatched = False
        try:
            try:
                lease = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                raise ModelUnavailable(f"model {model!r} was not ready within {timeout:g}s",
                                       retry_after=30) from None
            dispatched = True
            yield lease
        finally:
            self._waiters.pop(rid, None)
            if dispatched or (fut.done() and not fut.cancelled() and fut.exception() is None):
                self.swaps.job_stopped(rid)
                self._post(RequestDone(self._clock(), rid))
            else:  # given up, or failed here (a fatal engine): the core may still hold it queued
                if not fut.done():
                    fut.cancel()
                self._post(RequestCancelled(self._clock(), rid))

    async def _redispatch(self, waiter: _Waiter, model: str, limit_s: float) -> Lease:
        """A preempted request waits (first in its model's queue) to be dispatched again."""
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), limit_s)
        except TimeoutError:
            raise ModelUnavailable(f"model {model!r} did not come back within {limit_s:g}s to resume the stream",
                                   retry_after=30) from None

    # -- the loop ---------------------------------------------------------------------------------
    def _post(self, event: Event) -> None:
        self._events.put_nowait(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _run(self) -> None:
        last_tick = float("-inf")
        while True:
            event: Event
            try:
                event = self._events.get_nowait()
            except asyncio.QueueEmpty:
                deadline = self.core.next_deadline()
                now = self._clock()
                if deadline is None:
                    timeout = None
                elif deadline > last_tick:
                    timeout = max(0.0, deadline - now)
                else:  # a trigger that already fired but cannot act yet (a drain): re-check at tick_s
                    timeout = self.config.scheduler.tick_s
                try:
                    event = await asyncio.wait_for(self._events.get(), timeout)
                except TimeoutError:
                    event = Tick(self._clock())
                    last_tick = event.now
            if log.isEnabledFor(logging.DEBUG):
                log.debug("residency event %r", event)
            try:
                actions = self.core.handle(event)
            except Exception:
                log.exception("residency core failed on %r", event)
                continue
            for action in actions:
                self._execute(action)
            self._note_residency()
            if self.core.footprints.take_dirty():
                self.footprint_file.save(self.core.measured_footprints())

    def _execute(self, action: Action) -> None:
        if isinstance(action, Dispatch):
            w = self._waiters.get(action.request_id)
            if w is None or w.future.done():
                self._post(RequestDone(self._clock(), action.request_id))
                return
            eng = self.engines[self.model_engine[action.model]]
            w.future.set_result(Lease(action.model, eng.base_url, eng, preemption=w.preemption))
            self.swaps.job_started(action.request_id, action.model, action.resume)
            return
        if isinstance(action, Reject):
            w = self._waiters.get(action.request_id)
            if w is None or w.future.done():
                return
            exc: Exception
            if action.status == 429:
                exc = QueueFullError(f"model {action.model!r}: {action.reason}", action.retry_after_s)
            elif action.status == 409:
                exc = NotResident(f"model {action.model!r} is not resident on this box's GPU "
                                  "(X-Route-Policy: resident-only)", action.retry_after_s)
            elif action.reason.startswith("cannot fit"):
                exc = CannotFitError(self._cannot_fit_message(action.model, action.reason), action.retry_after_s)
            else:
                exc = ModelUnavailable(f"model {action.model!r}: {action.reason}", action.retry_after_s)
            w.future.set_exception(exc)
            return
        if isinstance(action, Preempt):
            self._preempt(action)
            return
        if isinstance(action, ForceStop):
            self._force_stop(action)
            return
        log.info("residency: %s %s", type(action).__name__.lower(), action.model)
        self.bus.publish(BusEvent("residency.action", action.model, {"action": type(action).__name__.lower()}))
        if isinstance(action, Start | Wake):
            self._spawn(self._activate(action))
        elif isinstance(action, Prefetch):
            self._spawn(self._prefetch(action.model))
        elif isinstance(action, Sleep | Unload):
            self._spawn(self._release(action))
        elif isinstance(action, Stop):
            self._spawn(self._stop(action.model))

    def _preempt(self, action: Preempt) -> None:
        w = self._waiters.get(action.request_id)
        if w is None or w.preemption is None or not w.future.done():
            return  # the lease already ended (its RequestDone is queued) or was never handed out
        w.future = asyncio.get_running_loop().create_future()  # the next Dispatch resumes it
        w.preemption.request()
        self.swaps.job_stopped(action.request_id)
        self._aborting.setdefault(action.model, []).append(w.preemption)
        self.preemptions[action.model] = self.preemptions.get(action.model, 0) + 1
        log.info("residency: preempt %s stream %s", action.model, action.request_id)
        self.bus.publish(BusEvent("residency.action", action.model,
                                  {"action": "preempt", "request": action.request_id}))

    def _force_stop(self, action: ForceStop) -> None:
        """A victim's drain passed its deadline with work that cannot be resumed: its engine is
        stopped, and the abandoned requests fail to their clients as their connections break."""
        log.warning("residency: %s still runs %d request(s) %gs past the waiting model's max_wait "
                    "(scheduler.drain_deadline_s); stopping its engine", action.model, len(action.abandoned),
                    self.config.scheduler.drain_deadline_s)
        self.bus.publish(BusEvent("residency.action", action.model,
                                  {"action": "force_stop", "abandoned": len(action.abandoned)}))
        self._spawn(self._stop(action.model))

    async def _await_aborts(self, model: str) -> None:
        """Preempted streams close their engine connections before the engine is released."""
        for p in self._aborting.pop(model, []):
            if not await p.wait_detached(ABORT_WAIT_S):
                log.warning("residency: a preempted %s stream did not close within %gs; releasing anyway "
                            "(the engine aborts what still runs)", model, ABORT_WAIT_S)

    def _cannot_fit_message(self, model: str, reason: str) -> str:
        need = self.core.footprints.of(model) / GIB
        budget = self.core.snapshot().vram_budget_bytes / GIB
        if self.gpu.snapshot().kind == "declared" and budget <= 0:
            return (f"model {model!r} needs a GPU with {need:.1f} GiB free; this box has no NVIDIA GPU "
                    "(set gpu.declared_total_gb to plan for one, or serve the model from a CPU worker)")
        return f"model {model!r} ({need:.1f} GiB) cannot fit in the GPU budget of {budget:.1f} GiB: {reason}"

    async def _activate(self, action: Start | Wake) -> None:
        model = action.model
        eng = self.engines[self.model_engine[model]]
        kind = ActionKind.START if isinstance(action, Start) else ActionKind.WAKE
        # What is timed: a wake from host RAM, a load into a running process, or a cold start
        # (the process too). Not a wake after a prefetch (it only maps the rest), nor an engine
        # that loads lazily inside the first job (ComfyUI).
        timed = "start" if eng.state is not ProcessState.READY else "wake" if kind is ActionKind.WAKE else "load"
        if not eng.adapter.activation_timed or (
                timed == "wake" and self.core.snapshot().models[model].prefetched_bytes):
            timed = ""
        if eng.state is not ProcessState.READY:
            self._expect_ready.add(eng.name)
        swap = self.swaps.begin(model, "cold_start" if eng.state is not ProcessState.READY
                                else "wake" if kind is ActionKind.WAKE else "load")
        began = self._clock()
        try:
            await eng.ensure_ready()
            await eng.activate()
        except Exception as exc:  # every failure goes back to the core
            self.swaps.end(swap, ok=False)
            self._expect_ready.discard(eng.name)
            log.warning("residency: %s %s failed: %s", kind.value, model, exc)
            self._post(ActionFailed(self._clock(), model, kind, str(exc)))
            return
        done = self._clock()
        self.swaps.end(swap)
        self._measured(model, timed, done - began)
        self._post(EngineReady(done, model))

    def _measured(self, model: str, transition: str, seconds: float) -> None:
        """Record a transition's duration and give the core the model's costs as now measured."""
        if not transition:
            return
        self.timings.record(model, transition, seconds)
        self.bus.publish(BusEvent("residency.swap", model, {"transition": transition, "seconds": round(seconds, 3)}))
        self.timings_file.save(self.timings.as_mapping())
        self._post(CostsMeasured(self._clock(), model, self.timings.costs(model, self._estimated[model].costs)))

    def _prefetch_room(self, model: str) -> str | None:
        """Why the GPU cannot take `model`'s weights now, by measurement; None when it can.

        The core sizes a prefetch from estimates (the catalog's weights, contexts measured at
        release). An out-of-memory half way through would leave a vLLM that cannot sleep again
        and must be stopped (a cold start later), so the measured free memory must hold the
        weights plus `PREFETCH_MARGIN_BYTES` for the working model's peak. A declared GPU has
        nothing to measure.
        """
        snap = self.gpu.snapshot()
        if snap.kind == "declared":
            return None
        need = self.core.snapshot().models[model].prefetched_bytes + PREFETCH_MARGIN_BYTES  # counted at issue
        if snap.free_bytes >= need:
            return None
        return f"{snap.free_bytes / GIB:.1f} GiB free on the GPU, the weights and margin need {need / GIB:.1f} GiB"

    async def _prefetch(self, model: str) -> None:
        """Wake only the weights of a sleeping engine. It cannot sleep again half awake, so on
        failure the engine is stopped: the core then counts nothing for it. Declined without
        touching the engine when the measured free memory would not hold the weights."""
        eng = self.engines[self.model_engine[model]]
        short = self._prefetch_room(model)
        if short is not None:
            log.info("residency: prefetch %s declined: %s; it wakes whole when its turn comes", model, short)
            self._post(ActionFailed(self._clock(), model, ActionKind.PREFETCH, short, engine_untouched=True))
            return
        try:
            if eng.state is not ProcessState.READY:
                raise EngineUnavailable(f"{eng.name} is {eng.state.value}")
            await eng.prefetch()
        except Exception as exc:
            log.warning("residency: prefetch %s failed: %s; stopping its engine", model, exc)
            self._stopping.add(eng.name)
            with contextlib.suppress(Exception):
                await eng.stop()
            self._stopping.discard(eng.name)
            self._post(ActionFailed(self._clock(), model, ActionKind.PREFETCH, str(exc)))
            return
        self._post(Prefetched(self._clock(), model))

    async def _release(self, action: Sleep | Unload) -> None:
        model = action.model
        eng = self.engines[self.model_engine[model]]
        kind = ActionKind.SLEEP if isinstance(action, Sleep) else ActionKind.UNLOAD
        tier = Tier.HOST if isinstance(action, Sleep) else Tier.DISK
        await self._await_aborts(model)
        before = eng.memory_held()
        swap = self.swaps.begin(model, "sleep" if tier is Tier.HOST else "offload")
        began = self._clock()
        try:
            if eng.state is not ProcessState.READY:
                raise EngineUnavailable(f"{eng.name} is {eng.state.value}")
            await eng.release(tier)
            held = await self._verify_drop(eng, before)
        except Exception as exc:
            self.swaps.end(swap, ok=False)
            log.warning("residency: %s %s not verified: %s; escalating", kind.value, model, exc)
            self._post(ActionFailed(self._clock(), model, kind, str(exc)))
            return
        done = self._clock()
        self.swaps.end(swap)
        self._measured(model, "release", done - began)  # until the memory is verified free
        self._post(ReleaseDone(done, model, held))

    async def _verify_drop(self, eng: Engine, before: int) -> int:
        """Wait until the engine's process group holds at most a CUDA context's worth."""
        allowed = max(1 * GIB, before // 4)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.config.scheduler.release_deadline_s
        while True:
            held = eng.memory_held()
            if held <= allowed or before <= allowed:
                return held
            if loop.time() >= end:
                raise TimeoutError(f"{eng.name} still holds {held / GIB:.1f} GiB after "
                                   f"{self.config.scheduler.release_deadline_s:g}s")
            await asyncio.sleep(RELEASE_POLL_S)

    async def _stop(self, model: str) -> None:
        await self._await_aborts(model)
        eng = self.engines[self.model_engine[model]]
        self._stopping.add(eng.name)
        swap = self.swaps.begin(model, "stop")
        try:
            await eng.stop()  # staged: SIGTERM, grace, SIGKILL of the group; returns once reaped
        finally:
            self.swaps.end(swap)
        self._stopping.discard(eng.name)  # already stopped: no STOPPED transition came to consume it
        self._post(ReleaseDone(self._clock(), model, 0))

    def _note_residency(self) -> None:
        """Bump `generation` when a scheduled model's tier or phase changed (after each core step)."""
        sig = tuple((s.tier, s.phase) for s in self.core.ledger.slots.values())
        if sig != self._residency_sig:
            self._residency_sig = sig
            self.generation += 1

    def _on_cpu_transition(self, t: Transition) -> None:
        """A CPU model's tier is its engine being up: a change of READY-ness is a residency change."""
        if (t.old is ProcessState.READY) != (t.new is ProcessState.READY):
            self.generation += 1

    # -- engine lifecycle (the supervisor's typed, lossless reports) -------------------------------
    def _on_transition(self, t: Transition) -> None:
        """Called synchronously by the engine's supervisor on every state change (must not block)."""
        started_by_us = stopped_by_us = False
        if t.new is ProcessState.READY:
            started_by_us = t.engine in self._expect_ready
            self._expect_ready.discard(t.engine)
        elif t.new is ProcessState.STOPPED:
            stopped_by_us = t.engine in self._stopping
            self._stopping.discard(t.engine)
        reaction = react(t, started_by_us=started_by_us, stopped_by_us=stopped_by_us)
        models = self._models_of.get(t.engine, [])
        if reaction.exited:
            for mid in models:
                self._post(EngineExited(self._clock(), mid, t.reason))
        if reaction.park:
            self._spawn(self._park(t.engine))
        if reaction.fail_waiting:
            self._expect_ready.discard(t.engine)
            eng = self.engines[t.engine]
            for w in self._waiters.values():
                if w.model in models and not w.future.done():
                    w.future.set_exception(self._fatal(w.model, eng))

    def _fatal(self, model: str, eng: Engine) -> ModelUnavailable:
        err = eng.process.fatal_error()
        return ModelUnavailable(f"model {model!r} is unavailable: {err}", retry_after=err.retry_after)

    async def _park(self, engine: str) -> None:
        eng = self.engines[engine]
        log.info("residency: %s was started outside the scheduler; releasing it until it is needed", engine)
        if Tier.DISK in eng.adapter.releasable:
            with contextlib.suppress(Exception):
                await eng.release(Tier.DISK)
                return
        self._stopping.add(engine)
        await eng.stop()
        self._stopping.discard(engine)

    async def _sample_gpu(self) -> None:
        interval = self.config.gpu.sample_interval_s
        while True:
            await asyncio.sleep(interval)
            snap = self.gpu.snapshot()
            # Attribute every engine's memory to its models whatever their tier (an engine being
            # started or released holds memory too); the core only learns footprints from
            # models it knows to be resident, and counts the rest as foreign.
            used: dict[str, int] = {}
            if snap.processes:  # a per-process reading exists (NVML, fake): attribute it by process group
                models_of: dict[str, list[str]] = {}
                for mid, eng_name in self.model_engine.items():
                    if mid not in self.cpu_models:
                        models_of.setdefault(eng_name, []).append(mid)
                by_engine = {e: snap.used_by(self.engines[e].pids()) for e in models_of}
                used = attribute_usage(by_engine, models_of, self.core.snapshot().models)
            self._post(GpuSample(self._clock(), snap.total_bytes, snap.free_bytes, used))
            now = self._clock()
            queues = {mid: {"queued": v.queued, "in_flight": v.in_flight,
                            "oldest_wait_s": None if v.oldest_arrival is None else round(now - v.oldest_arrival, 3)}
                      for mid, v in self.core.snapshot().models.items()}
            self.bus.publish(BusEvent("gpu.sample", snap.name or snap.kind, {**snap.as_dict(), "models": queues}),
                             remember=False)
