"""The residency manager: the one asyncio task that owns the pure `ResidencyCore`.

It feeds the core events (requests arriving and finishing, engines ready or crashed, releases
verified, GPU samples, ticks at the core's deadlines) from one queue, and executes the actions the
core returns through the engines: Start/Wake -> start the process if needed and activate;
Sleep/Unload -> `release(tier)`; Stop -> staged stop. Every release is verified against the GPU
probe: the engine's process group must actually drop its memory before `ReleaseDone`; a release
that misses `scheduler.release_deadline_s` is reported failed, and the core escalates to Stop
(SIGTERM, grace, SIGKILL of the group).

The gateway uses `lease(model)`: it waits in the model's queue and yields the engine's loopback URL
once dispatched; leaving the block (completion, error, client disconnect) tells the core.

Stream preemption (`scheduler.preemption`): a lease taken with `preemptible=True` on a text
model served by vLLM or the text worker (`resumable_engine`) carries a `Preemption`. When the
core preempts the request, the manager asks the holder to abort its engine connection, waits (at
most `ABORT_WAIT_S`) until every aborted stream of the model is closed before releasing the engine,
and the holder's `preemption.resume()` waits for the core to dispatch the request again (it is
queued first, with resume=True).

It must not decide anything itself: every residency decision is the core's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog import Catalog, CatalogError
from ..config import Config, ModelConfig, WorkerEngine
from ..engines.base import Adapter
from ..engines.base import Tier as EngineTier
from ..engines.engine import Engine
from ..events import Event as BusEvent
from ..events import EventBus
from ..gpu import GpuProbe
from ..residency import CannotFitError, DirectResidency, Lease, ModelUnavailable, Preemption, QueueFullError
from ..supervisor.process import EngineUnavailable
from ..supervisor.states import ProcessState
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
    GpuSample,
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
from .memory import MemoryBudget
from .policy import PolicySettings, default_max_wait_s
from .snapshot import SlotView
from .timings import TransitionTimes
from .types import ModelKind, ModelProfile, Request, SwapCosts, Tier

if TYPE_CHECKING:
    from ..store.state_doc import StateDoc

log = logging.getLogger("appliance.residency")

GIB = 1 << 30
PREFETCH_MARGIN_BYTES = 512 << 20
"""Left free beyond a prefetch's weights, by measurement, for the working model's peak."""
PCIE_BYTES_PER_S = 24e9  # pinned host RAM -> GPU on PCIe 4.0 x16 (SCHEDULING.md §2)
DISK_BYTES_PER_S = 5e9
RELEASE_POLL_S = 0.05
ABORT_WAIT_S = 5.0  # how long a release waits for preempted streams to close their engine connection
KIND_OF = {"text": ModelKind.LLM, "image": ModelKind.IMAGE, "speech": ModelKind.SPEECH, "embedding": ModelKind.EMBED}
COLD_START_S = {"vllm": 90.0, "comfyui": 15.0, "worker": 5.0}


def resumable_engine(config: Config, engine: str) -> bool:
    """Engines that continue a final assistant message (`continue_final_message`): vLLM and the
    appliance's text worker."""
    eng = config.engines[engine]
    return eng.kind == "vllm" or (isinstance(eng, WorkerEngine) and eng.worker == "text")


def profile_for(mid: str, m: ModelConfig, config: Config, adapter: Adapter,
                catalog: Catalog | None = None) -> ModelProfile:
    """A model's scheduling profile from its configuration (estimates until measured)."""
    engine_kind = config.engines[m.engine].kind
    footprint = int(m.vram_gb * GIB)
    host = int((m.host_ram_gb or m.vram_gb) * GIB)
    kind = KIND_OF[m.modality]
    costs = SwapCosts(
        wake_s=0.3 + host / PCIE_BYTES_PER_S,
        cold_start_s=COLD_START_S.get(engine_kind, 10.0) + footprint / DISK_BYTES_PER_S,
        load_s=1.5 + footprint / DISK_BYTES_PER_S,
        release_s=0.05,
    )
    concurrency = m.concurrency or (32 if kind is ModelKind.LLM else 1)
    return ModelProfile(
        id=mid,
        kind=kind,
        footprint_bytes=max(1, footprint),
        host_bytes=max(1, host),
        costs=costs,
        max_wait_s=max_wait_for(m, config, kind),
        keep_alive_s=m.keep_alive_s,
        pinned=m.pinned,
        queue_limit=m.queue_limit,
        max_tokens=m.max_tokens_cap if kind is ModelKind.LLM else None,
        concurrency=concurrency,
        supports_sleep=EngineTier.HOST in adapter.releasable,
        supports_unload=EngineTier.DISK in adapter.releasable,
        # Resuming a stream needs continue_final_message (vLLM's, or the text worker's); the
        # gateway stitches the stream.
        preemptible=config.scheduler.preemption and kind is ModelKind.LLM and resumable_engine(config, m.engine),
        engine=m.engine,
        release_unloads_process=adapter.release_unloads_all,
        prefetch_bytes=prefetch_bytes(m, footprint, adapter, catalog),
    )


def weights_bytes(m: ModelConfig, catalog: Catalog | None) -> int:
    """A model's weights alone: `models.X.weights_gb`, else its catalog entry's size on disk; 0
    when unknown."""
    if m.weights_gb:
        return int(m.weights_gb * GIB)
    if catalog is not None and m.catalog:
        with contextlib.suppress(CatalogError, KeyError):
            return catalog.get(m.catalog).disk_bytes
    return 0


def prefetch_bytes(m: ModelConfig, footprint: int, adapter: Adapter, catalog: Catalog | None) -> int:
    """The weights a staged wake brings back first, for engines that wake in stages (vLLM with
    sleep mode); 0 when unknown or when the weights are not smaller than the footprint (nothing
    would be left to wake)."""
    weights = weights_bytes(m, catalog) if adapter.supports_prefetch else 0
    return weights if 0 < weights < footprint else 0


def max_wait_for(m: ModelConfig, config: Config, kind: ModelKind) -> float:
    """The model's own setting, else the scheduler's, else the benchmarked default for its kind."""
    if m.max_wait_s is not None:
        return m.max_wait_s
    if config.scheduler.max_wait_s is not None:
        return config.scheduler.max_wait_s
    return default_max_wait_s(kind, config.scheduler.preemption)


def attribute_usage(by_engine: dict[str, int], models_of: dict[str, list[str]],
                    views: Mapping[str, SlotView]) -> dict[str, int]:
    """Each engine's measured GPU memory as per-model figures the core can learn footprints from.

    An engine serving one scheduled model gives it all. An engine serving several (one ComfyUI with
    two checkpoints) gives it to the models the core holds in VRAM, split in proportion to their
    footprints, so the memory is counted once and no model learns another's bytes; if none is in
    VRAM (being started or released) it goes to the first, which learns nothing from it (the core
    only learns from models it holds resident).
    """
    used: dict[str, int] = {}
    for engine, total in by_engine.items():
        mids = models_of.get(engine, [])
        if not mids:
            continue
        resident = [m for m in mids if m in views and views[m].tier is Tier.VRAM]
        if not resident:
            used[mids[0]] = total
            continue
        weights = [max(1, views[m].footprint_bytes) for m in resident]
        left = total
        for m, w in zip(resident[:-1], weights[:-1], strict=True):
            share = total * w // sum(weights)
            used[m] = share
            left -= share
        used[resident[-1]] = left
    return used


def runs_on_cpu(config: Config, engine: str, *, has_gpu: bool) -> bool:
    eng = config.engines[engine]
    if not isinstance(eng, WorkerEngine):
        return False
    return eng.device == "cpu" or (eng.device == "auto" and not has_gpu)


class StateFile:
    """A JSON object kept under the state directory so the next start knows what this one measured
    (footprints, transition times). Unreadable or not an object: empty. Written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, data: Mapping[str, Any]) -> None:
        """Best effort: a write that fails is logged and the next one tries again."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("residency: cannot write %s: %s", self.path, exc)


@dataclass
class _Waiter:
    model: str
    future: asyncio.Future[Lease]
    max_tokens: int | None = None
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
                           max_start_failures=3, failure_backoff_s=1.0),
            measured={str(k): int(v) for k, v in self.footprint_file.load().items()
                      if isinstance(v, int | float) and not isinstance(v, bool)},
        )
        self._clock = clock or time.monotonic
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
        self._bus_queue = bus.subscribe()

    # -- public -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._spawn(self._watch_engines())
        self._spawn(self._sample_gpu())

    async def close(self) -> None:
        for t in [self._task, *self._jobs]:
            if t is not None:
                t.cancel()
        for w in self._waiters.values():
            if not w.future.done():
                w.future.set_exception(ModelUnavailable("the daemon is shutting down"))
        self.bus.unsubscribe(self._bus_queue)

    def tier(self, model: str) -> str:
        if model in self.cpu_models:
            eng = self.engines[self.model_engine[model]]
            return "host" if eng.state is ProcessState.READY else "disk"
        view = self.core.snapshot().models.get(model)
        return view.tier.value if view is not None else "absent"

    def snapshot(self) -> dict[str, object]:
        snap = self.core.snapshot()
        timings = self.timings.medians()
        return {
            "vram_used_bytes": snap.vram_used_bytes,
            "vram_budget_bytes": snap.vram_budget_bytes,
            "host_used_bytes": snap.host_used_bytes,
            "host_budget_bytes": snap.host_budget_bytes,
            "switching_to": snap.plan_target,
            "models": {
                mid: {"tier": v.tier.value, "phase": v.phase, "queued": v.queued, "in_flight": v.in_flight,
                      "footprint_bytes": v.footprint_bytes, "measured": self.core.footprints.is_measured(mid),
                      "host_bytes": self._estimated[mid].host_bytes,
                      "prefetched_bytes": v.prefetched_bytes, "preemptions": self.preemptions.get(mid, 0),
                      "transitions_s": timings.get(mid, {})}
                for mid, v in snap.models.items()
            },
        }

    @contextlib.asynccontextmanager
    async def lease(self, model: str, *, deadline_s: float | None = None,
                    max_tokens: int | None = None, preemptible: bool = False) -> AsyncIterator[Lease]:
        """`preemptible`: the caller can abort and resume this request (see the module docstring)."""
        if model not in self.model_engine:
            raise ModelUnavailable(f"model {model!r} has no enabled engine", retry_after=60)
        if model in self.cpu_models:
            async with self._direct.lease(model, deadline_s=deadline_s) as lease:
                yield lease
            return
        rid = f"r{next(self._ids)}"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Lease] = loop.create_future()
        preemptible = preemptible and model in self._preemptible
        timeout = deadline_s if deadline_s is not None else self.config.server.load_deadline_s
        waiter = _Waiter(model, fut, max_tokens)
        if preemptible:
            waiter.preemption = Preemption(lambda: self._redispatch(waiter, model, timeout))
        self._waiters[rid] = waiter
        start = self._clock()
        self._post(RequestArrived(start, Request(rid, model, start, max_tokens=max_tokens, preemptible=preemptible)))
        dispatched = False
        try:
            try:
                lease = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                raise ModelUnavailable(f"model {model!r} was not ready within {timeout:g}s",
                                       retry_after=30) from None
            dispatched = True
            lease.waited_s = self._clock() - start
            yield lease
        finally:
            self._waiters.pop(rid, None)
            if dispatched or (fut.done() and not fut.cancelled() and fut.exception() is None):
                self._post(RequestDone(self._clock(), rid))
            elif not fut.done():
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
            if self.core.footprints.take_dirty():
                self.footprint_file.save(self.core.measured_footprints())

    def _execute(self, action: Action) -> None:
        if isinstance(action, Dispatch):
            w = self._waiters.get(action.request_id)
            if w is None or w.future.done():
                self._post(RequestDone(self._clock(), action.request_id))
                return
            eng = self.engines[self.model_engine[action.model]]
            w.future.set_result(Lease(action.model, eng.base_url, eng, preemption=w.preemption,
                                      info={"max_tokens": action.max_tokens, "resume": action.resume}))
            return
        if isinstance(action, Reject):
            w = self._waiters.get(action.request_id)
            if w is None or w.future.done():
                return
            exc: Exception
            if action.status == 429:
                exc = QueueFullError(f"model {action.model!r}: {action.reason}", action.retry_after_s)
            elif action.reason.startswith("cannot fit"):
                exc = CannotFitError(self._cannot_fit_message(action.model, action.reason), action.retry_after_s)
            else:
                exc = ModelUnavailable(f"model {action.model!r}: {action.reason}", action.retry_after_s)
            w.future.set_exception(exc)
            return
        if isinstance(action, Preempt):
            self._preempt(action)
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
        self._aborting.setdefault(action.model, []).append(w.preemption)
        self.preemptions[action.model] = self.preemptions.get(action.model, 0) + 1
        log.info("residency: preempt %s stream %s", action.model, action.request_id)
        self.bus.publish(BusEvent("residency.action", action.model,
                                  {"action": "preempt", "request": action.request_id}))

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
        began = self._clock()
        try:
            await eng.ensure_ready()
            await eng.activate()
        except Exception as exc:  # every failure goes back to the core
            log.warning("residency: %s %s failed: %s", kind.value, model, exc)
            self._post(ActionFailed(self._clock(), model, kind, str(exc)))
            return
        done = self._clock()
        self._measured(model, timed, done - began)
        self._post(EngineReady(done, model))

    def _measured(self, model: str, transition: str, seconds: float) -> None:
        """Record a transition's duration and give the core the model's costs as now measured."""
        if not transition:
            return
        self.timings.record(model, transition, seconds)
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
            self._post(ActionFailed(self._clock(), model, ActionKind.PREFETCH, str(exc)))
            return
        self._post(Prefetched(self._clock(), model))

    async def _release(self, action: Sleep | Unload) -> None:
        model = action.model
        eng = self.engines[self.model_engine[model]]
        kind = ActionKind.SLEEP if isinstance(action, Sleep) else ActionKind.UNLOAD
        tier = EngineTier.HOST if isinstance(action, Sleep) else EngineTier.DISK
        await self._await_aborts(model)
        before = eng.memory_held()
        began = self._clock()
        try:
            if eng.state is not ProcessState.READY:
                raise EngineUnavailable(f"{eng.name} is {eng.state.value}")
            await eng.release(tier)
            held = await self._verify_drop(eng, before)
        except Exception as exc:
            log.warning("residency: %s %s not verified: %s; escalating", kind.value, model, exc)
            self._post(ActionFailed(self._clock(), model, kind, str(exc)))
            return
        done = self._clock()
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
        await eng.stop()  # staged: SIGTERM, grace, SIGKILL of the group; returns once reaped
        self._post(ReleaseDone(self._clock(), model, 0))

    # -- watchers ---------------------------------------------------------------------------------
    async def _watch_engines(self) -> None:
        """Turn supervisor state changes into core events (crashes, unsolicited restarts)."""
        by_engine: dict[str, list[str]] = {}
        for mid, eng in self.model_engine.items():
            by_engine.setdefault(eng, []).append(mid)
        while True:
            ev = await self._bus_queue.get()
            if ev.kind != "engine.state" or ev.subject not in by_engine:
                continue
            old, new = ev.data.get("from"), ev.data.get("to")
            crashed = old == "ready" and new in ("backoff", "fatal")
            stopped_by_operator = new == "stopped" and ev.subject not in self._stopping
            if new == "stopped":
                self._stopping.discard(ev.subject)
            if crashed or stopped_by_operator:
                for mid in by_engine[ev.subject]:
                    self._post(EngineExited(self._clock(), mid, str(ev.data.get("reason", ""))))
            elif new == "ready" and ev.subject in self._expect_ready:
                self._expect_ready.discard(ev.subject)
            elif new == "ready":
                # Restarted by the supervisor after a crash, not by us: the core believes its
                # models are on disk, so give the memory back until the core asks for them.
                self._spawn(self._park(ev.subject))

    async def _park(self, engine: str) -> None:
        eng = self.engines[engine]
        log.info("residency: %s restarted by its supervisor; releasing it until it is needed", engine)
        if EngineTier.DISK in eng.adapter.releasable:
            with contextlib.suppress(Exception):
                await eng.release(EngineTier.DISK)
                return
        self._stopping.add(engine)
        await eng.stop()

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
