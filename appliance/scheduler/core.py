"""The residency scheduler's pure decision core: events in, actions out.

Owns: which models are in VRAM, in host RAM or on disk, every model's queue of waiting
requests and its in-flight requests, and the single eviction plan in progress. One
caller (the daemon's residency loop, the simulator, a test) passes each event with the
current time and executes the returned actions in order.

Must not: do I/O, read a clock, log, sleep or await. Time exists only as `event.now`.

Decision order, applied after every event once its facts are recorded:
 1. Admission (on arrival): unknown model 404; not downloaded, or larger than the VRAM
    budget left beside pinned models, 503; start failures in backoff 503; queue at its
    `queue_limit` 429. Every rejection carries a Retry-After estimate.
 2. Plan progress: each victim of the eviction plan with nothing in flight is released;
    once the plan's target fits, it is activated.
 3. Keep-alive: an idle, unpinned resident model past its TTL is released.
 4. Dispatch: every resident model not being drained gets queued requests, oldest
    first, up to its concurrency: the resident model is served while it has work. This
    comes before any switch decision, so a model that just arrived in VRAM always serves
    a first batch (two backlogged models cannot evict each other in a loop).
    One engine at a time (`PolicySettings.one_engine_at_a_time`, on by default):
    co-resident engines (XTTS beside SD3.5, or beside a small LLM) share the GPU's
    compute, so running two jobs at once only stretches both. A model starts work only
    while no co-resident one-job engine (concurrency 1) computes, and takes more only while
    no co-resident one-job model has an older waiter, so they are served in the order of
    their oldest waiters. A batching engine is never waited for (its batch may run for
    minutes) and, once it runs a batch, keeps admitting (one more stream costs it little):
    an idle LLM lets a short speech or image job run alone first, a busy one is never
    frozen. A head held for `one_engine_hold` x its max_wait (0.2 by default; the same
    waiting credit as below) is dispatched regardless, so holding never stretches the
    starvation bound.
 5. Candidates (models with waiting requests, or pinned, that are not in VRAM), pinned
    first, then by earliest max_wait deadline:
    a. if it fits beside what is resident (co-residence) and beside the plan's target,
       activate it now;
    b. else, if no plan is in progress, choose victims by GreedyDual-Size-Frequency
       (never pinned; prefer victims without queued work, then idle ones, then the lowest
       H = L + frequency x reload cost / size) and start a plan when a trigger fires:
       - urgency: the candidate is pinned, or its queue head has waited `max_wait`,
         counted only while its model was neither serving nor loading and only since the
         request became the oldest waiter; this overrides the protection that the
         resident batch otherwise enjoys, so no batch can starve another model;
       - idle victims: they have no work at all, queued or running (after
         `PolicySettings.idle_switch_hold_s` of waiting credit, 0 by default);
       - optionally a cheap drain (`PolicySettings.drain_below_s`).
       Models of one process whose release unloads them all (ComfyUI's /free) are one
       candidate, released together (unless one is pinned).
       If no set of resident models frees enough because sleeping engines still hold
       VRAM (their CUDA contexts), those engines may be victims too: they are stopped.
       A model's own held bytes count toward its activation (a wake adds the rest).
       Victims then admit nothing new and drain: a job in flight is not killed. With
       preemption enabled, a victim's preemptible LLM streams are aborted and re-queued
       to be resumed after the swap back; every other job (image, speech, an LLM request
       the caller cannot resume) runs to the end, within a deadline: a victim still busy
       once the target's head has waited max_wait + `drain_deadline_s` (a hung or runaway
       request) has its resumable streams preempted, and if work is left its engine is
       stopped and that work abandoned (`ForceStop`).
    c. Prefetch (`PolicySettings.prefetch`): the next model in line (the plan's target, else
       the first candidate left waiting) whose engine has a staged wake and sleeps in host
       RAM gets its weights back now if they alone fit (vLLM /wake_up?tags=weights beside a
       working XTTS); its Wake then only allocates the rest. A prefetched model with work
       waiting is never chosen for room: half-woken vLLM cannot sleep again, only stop.
       A Prefetch the driver declines (the GPU's measured free memory would not hold the
       weights) leaves the engine asleep and whole; that model is not prefetched again
       before its next wake.
 6. Restore (`PolicySettings.restore`, off by default): once the GPU has had nothing to run
    or queue for `restore_after_s`, the model most often asked for first after such a pause
    following the last model served (`forecast.NextModelForecast`) is woken from host RAM if
    the bet pays (`policy.restore_pays`); idle residents are released for it, nothing is
    ever stopped or cold-started on a guess.
 7. Plan progress again (a new plan's idle victims are released at once).
Releases go to host RAM (sleep) while it has room, dropping host copies that save less on
their way back (GreedyDual with a copy's cost priced as what dropping it costs: a load from
disk instead of a wake, or a cold start where the engine cannot unload), else to disk (unload
keeps the process, stop not). A copy being woken or prefetched, or the plan's target, is never
dropped.

Crash semantics (EngineExited): the model's residency is dropped (tier disk, engine
down, its memory counted free). Its in-flight requests are forgotten: the driver fails
them to their clients (their engine connection broke) and any later RequestDone for them
is ignored. Its waiting requests stay queued and the model is started again when next
chosen. An exit while starting counts as a failed start; after `max_start_failures` in a
row its queue is answered 503 until the backoff ends. A failed Sleep or Unload escalates
to Stop; a failed Stop keeps the memory counted until the engine is reported exited.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from appliance.scheduler import admission
from appliance.scheduler.events import (
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
    ReleaseDone,
    RequestArrived,
    RequestCancelled,
    RequestDone,
    Sleep,
    Start,
    Stop,
    Tick,
    Wake,
)
from appliance.scheduler.forecast import NextModelForecast
from appliance.scheduler.ledger import Ledger
from appliance.scheduler.memory import Footprints, MemoryBudget
from appliance.scheduler.policy import (
    RESTORE_MIN_OBSERVATIONS,
    HostView,
    PolicySettings,
    RestoreView,
    SwitchView,
    VictimView,
    choose_release,
    choose_victims,
    gdsf_value,
    host_copy_value,
    restore_pays,
    should_switch,
)
from appliance.scheduler.snapshot import CoreSnapshot
from appliance.scheduler.state import InFlight, ModelSlot, Phase
from appliance.scheduler.types import ModelProfile, Request, Tier


@dataclass(frozen=True, slots=True)
class _Plan:
    target: str
    victims: tuple[str, ...]
    contexts: tuple[str, ...] = ()  # sleeping victims whose engines are stopped for what they hold
    restore: bool = False  # brought back on a forecast while the GPU is idle: nobody waits for it
    drain_deadline: float = float("inf")  # victims still busy then are preempted, else stopped


class ResidencyCore:
    """The decision core. `handle(event)` returns the actions to execute, in order."""

    def __init__(
        self,
        profiles: Iterable[ModelProfile],
        budget: MemoryBudget,
        settings: PolicySettings | None = None,
        measured: Mapping[str, int] | None = None,
        tiers: Mapping[str, Tier] | None = None,
    ) -> None:
        """`measured`: footprints persisted by a previous run; `tiers`: where models start
        (default: on disk with the engine stopped, or absent when not downloaded)."""
        self.settings = settings or PolicySettings()
        self.ledger = Ledger(profiles, budget, measured, tiers)
        self._slots = self.ledger.slots
        self._where: dict[str, str] = {}
        self._plan: _Plan | None = None
        self._clock = 0.0  # GreedyDual's L: raised to the value of every released model
        self._forecast = NextModelForecast()
        self._last_done: str | None = None  # the model whose job ended last
        self._last_done_at = 0.0
        self._now = 0.0
        self._out: list[Action] = []

    # ------------------------------------------------------------------ public API

    @property
    def footprints(self) -> Footprints:
        return self.ledger.footprints

    def handle(self, event: Event) -> list[Action]:
        now = max(event.now, self._now)
        self._now = now
        for slot in self._slots.values():
            slot.settle_credit(now)
        self._out = []
        self._apply(event, now)
        self._decide(now)
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        """The next future time at which the core must be ticked (max_wait, TTL, backoff), if any."""
        times: list[float] = []
        for s in self._slots.values():
            if s.accrues_credit() and not s.in_vram and s.phase is Phase.STEADY:
                times.append(s.credit_mark + s.profile.max_wait_s - s.credit_s)
                if self.settings.idle_switch_hold_s > 0:  # a held idle switch
                    times.append(s.credit_mark + self.settings.idle_switch_hold_s - s.credit_s)
            if self.settings.one_engine_at_a_time and s.accrues_credit() and s.servable:
                times.append(s.credit_mark + self._hold_s(s) - s.credit_s)  # a held co-resident head
            if s.queue and s.failed_until > self._now:
                times.append(s.failed_until)
            ttl = s.profile.keep_alive_s
            if ttl is not None and s.servable and not s.has_work and not s.profile.pinned:
                times.append(s.last_used + ttl)
        if self.settings.restore and self._last_done is not None and self._gpu_idle():
            times.append(self._last_done_at + self.settings.restore_after_s)
        plan = self._plan
        if plan is not None and any(self._slots[v].in_flight and self._slots[v].tier is Tier.VRAM
                                    for v in plan.victims):
            times.append(plan.drain_deadline)
        future = [t for t in times if t > self._now]
        return min(future) if future else None

    def measured_footprints(self) -> dict[str, int]:
        """Peak footprints measured so far, for the loop to persist (`FootprintStore.save`)."""
        return self.footprints.measured()

    def snapshot(self) -> CoreSnapshot:
        return self.ledger.snapshot(self._now, self._plan.target if self._plan else None)

    # ------------------------------------------------------------- event handling

    def _apply(self, event: Event, now: float) -> None:
        match event:
            case RequestArrived(request=request):
                self._arrive(request, now)
            case RequestDone(request_id=rid) | RequestCancelled(request_id=rid):
                self._finish(rid, now)
            case EngineReady(model=model):
                slot = self._slots.get(model)
                if slot is not None and slot.phase is Phase.ACTIVATING:
                    slot.became_ready(now)
            case Prefetched(model=model):
                slot = self._slots.get(model)
                if slot is not None and slot.phase is Phase.PREFETCHING:
                    slot.phase = Phase.STEADY
            case ReleaseDone(model=model, held_bytes=held):
                slot = self._slots.get(model)
                if slot is not None and slot.phase is Phase.RELEASING:
                    stopped = slot.stopping
                    slot.release_verified(held)
                    if stopped:
                        self._process_stopped(slot, now)
            case EngineExited(model=model):
                self._exited(model, now)
            case ActionFailed(model=model, action=kind, engine_untouched=untouched):
                self._failed(model, kind, now, untouched)
            case GpuSample():
                self._sample(event)
            case CostsMeasured(model=model, costs=costs):
                slot = self._slots.get(model)
                if slot is not None:
                    slot.profile = replace(slot.profile, costs=costs)
            case OperatorPin(model=model, pinned=pinned):
                slot = self._slots.get(model)
                if slot is not None:
                    slot.profile = replace(slot.profile, pinned=pinned)
            case OperatorRelease(model=model):
                slot = self._slots.get(model)
                if slot is not None and slot.servable and not slot.has_work and not slot.profile.pinned:
                    self._release(slot)
            case Tick():
                pass

    def _arrive(self, request: Request, now: float) -> None:
        if request.id in self._where:
            raise ValueError(f"request id {request.id} is already known to the scheduler")
        slot = self._slots.get(request.model)
        if self.settings.restore and slot is not None and self._last_done is not None and self._paused(now):
            self._forecast.observe(self._last_done, request.model)  # only restore reads the forecast
        fits = self.ledger.fits_ever(slot) if slot is not None else False
        rejection = admission.admit(request, slot, now, fits, self.settings)
        if rejection is not None:
            self._out.append(rejection)
            return
        assert slot is not None
        if not slot.queue:
            slot.restart_credit(now)
        slot.queue.append(request)
        self._where[request.id] = request.model

    def _finish(self, rid: str, now: float) -> None:
        model = self._where.pop(rid, None)
        if model is None:
            return
        slot = self._slots[model]
        slot.resumable.discard(rid)
        entry = slot.in_flight.pop(rid, None)
        if entry is not None:
            ran = now - entry.since
            slot.service_s += 0.2 * (ran - slot.service_s)
            if not entry.resumed:
                slot.history.record(ran)
            slot.last_used = now
            self._last_done, self._last_done_at = model, now
            return
        was_head = bool(slot.queue) and slot.queue[0].id == rid
        slot.queue = deque(r for r in slot.queue if r.id != rid)
        if was_head:
            slot.restart_credit(now)

    def _exited(self, model: str, now: float) -> None:
        slot = self._slots.get(model)
        if slot is None:
            return
        if slot.phase is Phase.ACTIVATING:
            self._note_start_failure(slot, now)
        for rid in slot.lost_engine():
            self._where.pop(rid, None)
        if slot.queue:
            slot.restart_credit(now)

    def _failed(self, model: str, kind: ActionKind, now: float, untouched: bool = False) -> None:
        slot = self._slots.get(model)
        if slot is None:
            return
        if untouched and kind is ActionKind.PREFETCH and slot.phase is Phase.PREFETCHING:
            # Declined: the engine still sleeps whole. It waits for its wake as usual, and is not
            # prefetched again before that wake (the memory is not there).
            slot.phase, slot.prefetched_bytes, slot.prefetch_declined = Phase.STEADY, 0, True
            return
        if kind in (ActionKind.START, ActionKind.WAKE) and slot.phase is Phase.ACTIVATING:
            # The driver cleans up a failed start (stops what it started); any host copy is gone.
            slot.lost_engine()
            self._note_start_failure(slot, now)
        elif kind is ActionKind.PREFETCH and slot.phase is Phase.PREFETCHING:
            slot.lost_engine()  # the driver stopped the engine: its host copy went with it
            self._process_stopped(slot, now)
        elif kind in (ActionKind.SLEEP, ActionKind.UNLOAD) and slot.phase is Phase.RELEASING:
            slot.release_to, slot.stopping = Tier.DISK, True
            self._out.append(Stop(model))

    def _note_start_failure(self, slot: ModelSlot, now: float) -> None:
        slot.failures += 1
        slot.failed_until = now + self.settings.failure_backoff_s * 2 ** (slot.failures - 1)
        if slot.failures >= self.settings.max_start_failures:
            self._reject_queue(slot, 503, slot.failed_until - now, "model failed to start")

    def _reject_queue(self, slot: ModelSlot, status: int, retry_after_s: float, reason: str) -> None:
        for r in slot.queue:
            self._where.pop(r.id, None)
            self._out.append(admission.reject(r, status, retry_after_s, reason))
        slot.queue.clear()

    def _sample(self, sample: GpuSample) -> None:
        known = 0
        for model, used in sample.used_by_model.items():
            known += used
            slot = self._slots.get(model)
            if slot is not None and slot.tier is Tier.VRAM and slot.phase is Phase.STEADY:
                self.footprints.observe(model, used)
        foreign = sample.total_bytes - sample.free_bytes - known
        self.ledger.foreign_bytes = max(0, foreign - self.settings.foreign_allowance_bytes)

    # ------------------------------------------------------------------ decisions

    def _decide(self, now: float) -> None:
        self._advance_plan(now)
        self._expire_keep_alive(now)
        self._dispatch(now)
        self._consider_candidates(now)
        self._maybe_restore(now)
        self._advance_plan(now)

    def _advance_plan(self, now: float) -> None:
        plan = self._plan
        if plan is None:
            return
        target = self._slots[plan.target]
        if target.in_vram or target.phase not in (Phase.STEADY, Phase.PREFETCHING):
            self._plan = None
            return
        if not target.queue and not target.profile.pinned and not plan.restore:
            for v in plan.victims:  # nobody waits any more: victims not yet released serve again
                victim = self._slots[v]
                victim.draining = victim.phase is Phase.RELEASING
            self._plan = None
            return
        for v in plan.victims:
            slot = self._slots[v]
            if slot.tier is Tier.VRAM and slot.phase is Phase.STEADY and slot.in_flight and now >= plan.drain_deadline:
                self._drain_expired(slot, now)
            if slot.tier is Tier.VRAM and slot.phase is Phase.STEADY and not slot.in_flight:
                self._release(slot)
            elif v in plan.contexts and slot.engine_up and slot.tier is not Tier.VRAM and slot.phase is Phase.STEADY:
                self._stop_sleeping(slot)
        if target.phase is Phase.PREFETCHING:
            return  # its weights are on their way; the wake follows once they are in
        if self.ledger.activation_bytes(target) <= self.ledger.vram_free():
            self._activate(target)
            self._plan = None
        elif not any(self._slots[v].tier is Tier.VRAM or self._slots[v].phase is Phase.RELEASING
                     for v in plan.victims):
            self._plan = None  # the victims are gone and it still does not fit: plan afresh

    def _expire_keep_alive(self, now: float) -> None:
        for slot in self._slots.values():
            ttl = slot.profile.keep_alive_s
            if ttl is None or slot.profile.pinned or not slot.servable or slot.has_work:
                continue
            if now - slot.last_used >= ttl:
                self._release(slot)

    def _dispatch(self, now: float) -> None:
        slots: Iterable[ModelSlot] = self._slots.values()
        if self.settings.one_engine_at_a_time:
            slots = sorted(slots, key=lambda s: s.queue[0].arrival if s.queue else float("inf"))
        for slot in slots:
            if not slot.servable:
                continue
            while slot.queue and len(slot.in_flight) < slot.profile.concurrency and self._may_compute(slot):
                request = slot.queue.popleft()
                resume = request.id in slot.resumable
                slot.resumable.discard(request.id)
                slot.in_flight[request.id] = InFlight(request, now, resume)
                slot.frequency += 1.0
                slot.last_used = now
                slot.gdsf_value = gdsf_value(self._clock, slot.frequency, slot.profile, self.ledger.footprint(slot))
                slot.value_clock = self._clock
                self._out.append(Dispatch(slot.id, request.id, resume=resume))
                if slot.queue:
                    slot.restart_credit(now)

    def _may_compute(self, slot: ModelSlot) -> bool:
        """One engine at a time: co-resident engines share the GPU's compute, so running two jobs
        at once only stretches both. A model starts work only when no co-resident one-job engine
        computes, and takes more work only while no co-resident one-job model has an older waiter;
        a batching engine (concurrency > 1) that already runs a batch keeps admitting, and no one
        waits for a batching engine. A queue head is held at most `one_engine_hold` x max_wait of
        waiting credit; then both run (time-sliced)."""
        if not self.settings.one_engine_at_a_time or slot.credit_s >= self._hold_s(slot):
            return True
        batching = slot.profile.concurrency > 1
        head = slot.queue[0].arrival
        for other in self._slots.values():
            if other is slot or not other.in_vram or other.profile.concurrency > 1:
                continue  # nobody waits for a batching engine: its batch may run for minutes
            if other.in_flight and not slot.in_flight:
                return False
            if batching and slot.in_flight:
                continue  # a running batch keeps admitting: one more stream costs it little
            if other.servable and other.queue and other.queue[0].arrival < head:
                return False
        return True

    def _hold_s(self, slot: ModelSlot) -> float:
        return self.settings.one_engine_hold * slot.profile.max_wait_s

    def _consider_candidates(self, now: float) -> None:
        candidates = [
            s
            for s in self._slots.values()
            if (s.queue or s.profile.pinned)
            and not s.in_vram
            and s.phase in (Phase.STEADY, Phase.PREFETCHING)  # a prefetching model may plan its room
            and s.tier is not Tier.ABSENT
            and s.failed_until <= now
        ]
        candidates.sort(key=lambda s: (not s.profile.pinned, s.credit_mark + s.profile.max_wait_s - s.credit_s))
        for slot in candidates:
            if slot.phase is Phase.PREFETCHING:
                if self._plan is None and not self._fits_beside_plan(self.ledger.activation_bytes(slot)):
                    self._maybe_plan(slot, now)  # victims release while the weights come in
            elif self._fits_beside_plan(self.ledger.activation_bytes(slot)):
                self._activate(slot)
            elif self._plan is None:
                self._maybe_plan(slot, now)
        self._maybe_prefetch([s for s in candidates if s.phase is Phase.STEADY and not s.in_vram])

    def _gpu_idle(self) -> bool:
        return self._plan is None and all(not s.has_work and s.phase is Phase.STEADY for s in self._slots.values())

    def _paused(self, now: float) -> bool:
        """The GPU has been idle `restore_after_s` since the last job ended."""
        return self._gpu_idle() and now - self._last_done_at >= self.settings.restore_after_s

    def _maybe_restore(self, now: float) -> None:
        """While the GPU has nothing to do, bring back from host RAM the model most likely asked
        for next after the last one served, if the gamble pays (`policy.restore_pays`)."""
        if not self.settings.restore or self._last_done is None or not self._paused(now):
            return
        last = self._last_done
        if self._forecast.observations(last) < RESTORE_MIN_OBSERVATIONS:
            return
        probs = self._forecast.probabilities(last)
        target_id = max(probs, key=lambda m: probs[m])
        slot = self._slots[target_id]
        if slot.in_vram or slot.tier is not Tier.HOST or not slot.engine_up or slot.prefetched_bytes:
            return
        need = self.ledger.activation_bytes(slot)
        views, members = self._victim_views()
        victims = choose_victims(need, self.ledger.vram_free(), views)
        if victims is None:
            return
        victims = tuple(m for v in victims for m in members.get(v, (v,)))
        out = [self._slots[v] for v in victims]
        swap = slot.profile.costs.wake_s + sum(o.profile.costs.release_s for o in out)
        back = tuple((probs.get(o.id, 0.0), slot.profile.costs.release_s + o.profile.costs.wake_s) for o in out)
        if not restore_pays(RestoreView(probs[target_id], swap, back)):
            return
        if not victims:
            self._activate(slot)
            return
        self._plan = _Plan(slot.id, victims, restore=True, drain_deadline=now + self.settings.drain_deadline_s)
        for o in out:
            o.draining = True

    def _maybe_prefetch(self, waiting: list[ModelSlot]) -> None:
        """Bring back the weights of the next model in line (the plan's target, else the first
        waiting candidate) while what it does not fit beside still works, if the weights alone
        fit (`PolicySettings.prefetch`)."""
        if not self.settings.prefetch or not waiting:
            return
        plan = self._plan
        slot = self._slots[plan.target] if plan is not None else waiting[0]
        size = slot.profile.prefetch_bytes
        if (size <= 0 or slot.tier is not Tier.HOST or not slot.engine_up or slot.phase is not Phase.STEADY
                or slot.prefetched_bytes or slot.prefetch_declined or not slot.queue):
            return
        if size <= self.ledger.vram_free():
            slot.phase, slot.prefetched_bytes = Phase.PREFETCHING, size
            self._out.append(Prefetch(slot.id))

    def _maybe_plan(self, slot: ModelSlot, now: float) -> None:
        need = self.ledger.activation_bytes(slot)
        free = self.ledger.vram_free() + self.ledger.leaving_vram()
        if need <= free:
            return  # releases already under way will make room
        views, members = self._victim_views()
        victims = choose_victims(need, free, views)
        if victims is None:  # what sleeping engines still hold may be what is missing
            views += self._context_views(slot)
            victims = choose_victims(need, free, views)
        if victims is None:
            if not self.ledger.fits_ever(slot):
                self._reject_queue(slot, 503, admission.CANNOT_FIT_RETRY_S, "cannot fit beside pinned models")
            return
        chosen = [v for v in views if v.id in victims]
        victims = tuple(m for v in victims for m in members.get(v, (v,)))
        drain = max((self._drain_s(self._slots[v], now) for v in victims), default=0.0)
        # A prefetched model is never evicted for room, so while another model is overdue it
        # must take its turn at once (its victims drain) to keep the starvation bound.
        overdue = slot.prefetched_bytes > 0 and any(
            o is not slot and o.queue and not o.in_vram and o.credit_s >= o.profile.max_wait_s
            for o in self._slots.values()
        )
        target = SwitchView(slot.credit_s, slot.profile.max_wait_s, urgent=slot.profile.pinned or overdue)
        if not should_switch(target, chosen, drain, self.settings):
            return
        contexts = tuple(v for v in victims if self._slots[v].tier is not Tier.VRAM)
        # The drain may last until the target's head has waited max_wait plus the deadline.
        deadline = now + max(0.0, slot.profile.max_wait_s - slot.credit_s) + self.settings.drain_deadline_s
        self._plan = _Plan(slot.id, victims, contexts, drain_deadline=deadline)
        for v in victims:
            victim = self._slots[v]
            victim.draining = True
            if self.settings.preemption and victim.profile.preemptible:
                self._preempt_all(victim, now)

    def _preempt_all(self, slot: ModelSlot, now: float) -> None:
        """Abort the slot's preemptible streams and queue them first; the others drain."""
        entries = sorted((e for e in slot.in_flight.values() if e.request.preemptible),
                         key=lambda e: e.request.arrival)
        for entry in entries:
            self._out.append(Preempt(slot.id, entry.request.id))
            slot.resumable.add(entry.request.id)
            del slot.in_flight[entry.request.id]
        if entries:
            slot.queue.extendleft(reversed([e.request for e in entries]))
            slot.restart_credit(now)

    def _drain_expired(self, slot: ModelSlot, now: float) -> None:
        """A victim is still busy at the plan's drain deadline (a hung or runaway request): its
        streams that can be resumed are preempted; if work is left, its engine is stopped and
        that work abandoned, so no request holds a model's lease forever."""
        if slot.profile.preemptible:
            self._preempt_all(slot, now)
        if not slot.in_flight:
            return  # everything was preempted: the caller releases it as usual
        abandoned = tuple(slot.in_flight)
        for rid in abandoned:
            self._where.pop(rid, None)
        slot.resumable.difference_update(abandoned)
        slot.in_flight.clear()
        self._clock = max(self._clock, slot.gdsf_value)
        slot.phase, slot.release_to, slot.stopping, slot.draining = Phase.RELEASING, Tier.DISK, True, True
        self._out.append(ForceStop(slot.id, abandoned))

    # -------------------------------------------------------------- transitions

    def _activate(self, slot: ModelSlot) -> None:
        slot.phase = Phase.ACTIVATING
        self._out.append(Wake(slot.id) if slot.tier is Tier.HOST else Start(slot.id))

    def _release(self, slot: ModelSlot) -> None:
        self._clock = max(self._clock, slot.gdsf_value)
        plan = choose_release(slot.profile, self._host_value(slot), self.ledger.host_free(), self._droppable_hosts())
        for drop in plan.drop_from_host:
            # Dropping a host copy moves no data: its RAM is counted free from now on.
            host_slot = self._slots[drop.model]
            host_slot.phase, host_slot.release_to = Phase.RELEASING, Tier.DISK
            host_slot.stopping = isinstance(drop, Stop)
            self._out.append(drop)
        release = plan.release
        slot.phase, slot.draining = Phase.RELEASING, True
        slot.release_to = Tier.HOST if isinstance(release, Sleep) else Tier.DISK
        slot.stopping = isinstance(release, Stop)
        self._out.append(release)

    def _host_value(self, slot: ModelSlot) -> float:
        return host_copy_value(slot.value_clock, slot.frequency, slot.profile)

    def _droppable_hosts(self) -> list[HostView]:
        """Host copies a release may drop for room: steady sleeping models, never one whose weights
        a Prefetch brought back (half-awake vLLM can only be stopped, and its wake is next), nor the
        model the plan in progress is for (dropping its copy would turn its wake into a load from
        disk or a cold start)."""
        target = self._plan.target if self._plan is not None else None
        return [
            HostView(s.id, s.profile.host_bytes, self._host_value(s), stop_only=not s.profile.supports_unload)
            for s in self._slots.values()
            if s.tier is Tier.HOST and s.phase is Phase.STEADY and not s.prefetched_bytes and s.id != target
        ]

    def _victim_views(self) -> tuple[list[VictimView], dict[str, tuple[str, ...]]]:
        """Resident models as eviction candidates. Models of one process whose release unloads
        them all (one ComfyUI's /free) are one candidate, named after its first member; returns
        the views and each group's members. A group with a pinned member is not evicted whole:
        its other members stay single candidates (the pinned one reloads on its next use)."""
        groups: dict[str, list[ModelSlot]] = {}
        for s in self._slots.values():
            if s.tier is Tier.VRAM and s.phase is Phase.STEADY:
                key = self.ledger.process(s) if s.profile.release_unloads_process else "\0" + s.id
                groups.setdefault(key, []).append(s)
        views: list[VictimView] = []
        members: dict[str, tuple[str, ...]] = {}
        for slots in groups.values():
            if any(s.profile.pinned for s in slots):
                views += [VictimView(s.id, self.ledger.release_frees(s), s.gdsf_value, busy=s.busy,
                                     queued=len(s.queue)) for s in slots if not s.profile.pinned]
                continue
            views.append(VictimView(
                slots[0].id, sum(self.ledger.release_frees(s) for s in slots), sum(s.gdsf_value for s in slots),
                busy=any(s.busy for s in slots), queued=sum(len(s.queue) for s in slots),
            ))
            members[slots[0].id] = tuple(s.id for s in slots)
        return views, members

    def _context_views(self, target: ModelSlot) -> list[VictimView]:
        """Sleeping engine processes as victims for the VRAM they still hold (their CUDA
        contexts), one per process, named after a model it serves: stopping it takes all of its
        models down with their host copies. Not the target's own process, nor one serving a
        model that is pinned or in transition (`held_by_process` already leaves out every process
        with a model in VRAM)."""
        held = self.ledger.held_by_process()
        by_process: dict[str, list[ModelSlot]] = {}
        for s in self._slots.values():
            if self.ledger.process(s) in held:
                by_process.setdefault(self.ledger.process(s), []).append(s)
        views: list[VictimView] = []
        for process, slots in by_process.items():
            if any(s is target or s.profile.pinned or s.phase is not Phase.STEADY for s in slots):
                continue
            if any(s.prefetched_bytes and s.queue for s in slots):
                continue  # its weights are back for work waiting: it wakes next, never stopped for room
            name = next(s for s in slots if s.engine_up).id
            views.append(VictimView(name, held[process], sum(s.gdsf_value for s in slots), busy=False,
                                    queued=sum(len(s.queue) for s in slots)))
        return views

    def _process_stopped(self, slot: ModelSlot, now: float) -> None:
        """The other models of the same process went down with it: sleeping ones lose their host
        copies and contexts; a resident one (a stop escalated from a release that did not verify)
        is treated as its engine exiting (its in-flight requests fail, its queue waits for a start)."""
        if not slot.profile.engine:
            return
        process = self.ledger.process(slot)
        for other in self._slots.values():
            if other is slot or self.ledger.process(other) != process or not other.engine_up:
                continue
            if other.in_vram and other.phase is not Phase.RELEASING:
                self._exited(other.id, now)
            elif not other.in_vram and other.phase in (Phase.STEADY, Phase.PREFETCHING):
                other.lost_engine()  # nothing of it runs: host copy, context and prefetched weights are gone

    def _stop_sleeping(self, slot: ModelSlot) -> None:
        """Stop a sleeping engine to free what it still holds in VRAM; its host copy goes too."""
        slot.phase, slot.release_to, slot.stopping = Phase.RELEASING, Tier.DISK, True
        self._out.append(Stop(slot.id))

    def _fits_beside_plan(self, need: int) -> bool:
        """Fits now, and after the plan in progress (if any) completes."""
        free = self.ledger.vram_free()
        if need > free:
            return False
        plan = self._plan
        if plan is None:
            return True
        freed = sum(self.ledger.release_frees(self._slots[v]) for v in plan.victims if self._slots[v].tier is Tier.VRAM)
        return need <= free + freed - self.ledger.activation_bytes(self._slots[plan.target])

    def _drain_s(self, slot: ModelSlot, now: float) -> float:
        """Expected seconds until the slot's longest running job ends (from observed durations)."""
        return max((slot.history.residual(now - e.since) for e in slot.in_flight.values()), default=0.0)
