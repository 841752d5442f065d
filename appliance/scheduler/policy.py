"""Pure policy functions of the residency scheduler: victims, release tiers, switch triggers.

Owns: the choices that are functions of a snapshot, with no state of their own:
- GreedyDual-Size-Frequency values (Cao & Irani 1997, as FaasCache uses for keep-alive):
  H = L + frequency x reload_cost / size, L the clock raised to each evicted value;
- which resident models to evict so a target fits (fewest models with queued work, then
  fewest busy ones, then the lowest summed H);
- which tier a release goes to (sleep to host RAM while it fits, evicting host copies that
  save less on their way back, by `host_copy_value`; else unload, else stop);
- when waiting work for a model that does not fit justifies a switch.

Must not: mutate anything, log, or read a clock. The core logs nothing either: the
driver logs the actions it executes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from appliance.defaults import DRAIN_DEADLINE_S
from appliance.scheduler.events import Sleep, Stop, Unload
from appliance.scheduler.types import GB, ModelKind, ModelProfile

EXACT_VICTIM_SEARCH_LIMIT = 12
"""Up to this many eviction candidates the best victim set is found exactly (2^n subsets)."""


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Knobs of the policy (parsed from configuration by the caller).

    preemption: abort and later resume the LLM streams of a model being switched out
        (never image or speech jobs); off by default, measured separately.
    drain_below_s: if set, also switch before max_wait when the models to evict have
        nothing queued and their running jobs are expected to end within this many
        seconds (the drain is priced, not "waiting work x swap cost", which fires on
        almost every arrival when swaps cost a second or two). Off by default: in the
        benchmark it neither helped nor hurt measurably.
    one_engine_at_a_time: serialise the compute of co-resident one-job models (oldest
        waiter's model first). Co-resident engines share one GPU, so overlapping two jobs
        delays both; in the benchmark (W1, W3s at load 0.7) serving them in turn cut the p95
        by 1-2% against B3 with the same swaps (seeds 0-9 and 10-19 alike). A batching
        engine (concurrency > 1) is never waited for and, once it runs a batch, keeps
        admitting: freezing an LLM's batch behind speech jobs made bursty workloads
        1.2-1.3x worse than B3 when XTTS fitted beside the LLM.
    one_engine_hold: a held head runs anyway (time-sliced) once its waiting credit
        reaches this fraction of its max_wait (0.2: image 6 s, speech 12 s by default);
        holding to the full max_wait was slightly worse at the p95.
    prefetch: bring the weights of the next model in line back from host RAM while the
        model it does not fit beside still works, when the weights alone fit beside it and
        the model has a staged wake (`ModelProfile.prefetch_bytes`: vLLM wakes its weights,
        then its KV cache). The 32B LLM's 1.1 s wake then runs during a speech job instead
        of after it. Half-woken vLLM cannot sleep again, so a prefetched model is never
        evicted while it has work waiting; only its engine can be stopped once it has none.
    restore: while the GPU has nothing to do, bring back the model most likely asked for
        next (`forecast.NextModelForecast`: after speech, a voice assistant's next chat)
        when its expected saving beats the expected cost of evicting the idle residents
        (`restore_pays`); only from host RAM, never a cold start, and only once the GPU has
        been idle `restore_after_s`: a request that follows at once (the speech of a chat
        just answered) is served as usual, and the forecast counts only what follows a pause.
        Off by default: in the benchmark (`--restore`) it cut the p95 by about 1 % (W3s, W4)
        for 5-10 % more swaps (a wrong guess costs one), which exceeds B3's swap count on
        W3s@0.5.
    idle_switch_hold_s: a switch whose victims are idle (the idle trigger) waits until the
        waiting model's oldest request has this much waiting credit, so that more requests
        share each swap. 0 by default: in the benchmark (`--set idle_switch_hold_s=H`) it
        trades latency for swaps steeply. W3s@0.5 / W3s@0.7, time swapping and p95 x B3:
        0 s 6.6 / 7.8 % at 0.905 / 0.784; 2 s 6.1 / 7.0 % at 0.980 / 0.843; 4 s 5.4 / 6.2 %
        at 1.084 / 0.927; 8 s 4.5 / 5.0 % at 1.331 / 1.105.
    drain_deadline_s: how long a switch's victims may keep draining once the model the switch is
        for has waited its max_wait (for a switch made earlier, counted from when it would have).
        Past it, a victim's streams that can be resumed are preempted (even with `preemption`
        off: its profile says whether its streams can be resumed, each request whether it can
        be), and if work is left its engine is stopped and that work abandoned (`ForceStop`):
        one hung engine request must not hold its model's lease forever. The starvation bound
        becomes max_wait + this deadline (+ the stop and the swap) when an engine hangs.
    max_start_failures: consecutive failed starts before the queue is answered 503.
    failure_backoff_s: first backoff after a failed start (doubles each time).
    foreign_allowance_bytes: GPU memory used outside known engines that is tolerated
        before the VRAM budget shrinks (driver allocations, a desktop).
    """

    preemption: bool = False
    drain_below_s: float | None = None
    one_engine_at_a_time: bool = True
    one_engine_hold: float = 0.2
    prefetch: bool = True
    restore: bool = False
    restore_after_s: float = 1.0
    idle_switch_hold_s: float = 0.0
    drain_deadline_s: float = DRAIN_DEADLINE_S
    max_start_failures: int = 3
    failure_backoff_s: float = 10.0
    foreign_allowance_bytes: int = GB // 2


DEFAULT_MAX_WAIT_S = {ModelKind.LLM: 60.0, ModelKind.IMAGE: 30.0, ModelKind.SPEECH: 60.0, ModelKind.EMBED: 30.0}
"""The starvation bound per kind of model, as benchmarked: a chat batch may hold the GPU a minute
(answers run that long), an image waits at most 30 s for it. Configuration can override each."""
PREEMPTION_MAX_WAIT_S = {ModelKind.IMAGE: 15.0, ModelKind.SPEECH: 15.0}
"""With stream preemption a switch away from the LLM costs no drain, so shorter waits pay off."""


def default_max_wait_s(kind: ModelKind, preemption: bool = False) -> float:
    if preemption and kind in PREEMPTION_MAX_WAIT_S:
        return PREEMPTION_MAX_WAIT_S[kind]
    return DEFAULT_MAX_WAIT_S[kind]


@dataclass(frozen=True, slots=True)
class VictimView:
    """A resident model as the victim choice sees it."""

    id: str
    bytes: int
    value: float
    busy: bool
    queued: int


def gdsf_value(clock: float, frequency: float, profile: ModelProfile, footprint: int) -> float:
    """H = L + frequency x reload cost / size; reload cost is the cheapest way back to VRAM."""
    return clock + frequency * reload_cost(profile) / max(footprint / GB, 1e-3)


def reload_cost(profile: ModelProfile) -> float:
    costs = profile.costs
    if profile.supports_sleep:
        return costs.wake_s + costs.release_s
    if profile.supports_unload:
        return costs.load_s + costs.release_s
    return costs.cold_start_s + costs.release_s


def host_copy_value(clock: float, frequency: float, profile: ModelProfile) -> float:
    """H of a model's copy in host RAM: what it saves each time the model comes back (a wake instead
    of a load from disk, or instead of a cold start when its engine cannot unload) x frequency /
    the RAM it takes. Dropping a host copy costs exactly that saving, so copies (and the model
    being released) are compared by it, not by the cost of the wake that they make cheap."""
    costs = profile.costs
    from_disk = costs.load_s if profile.supports_unload else costs.cold_start_s
    return clock + frequency * max(0.0, from_disk - costs.wake_s) / max(profile.host_bytes / GB, 1e-3)


def choose_victims(need: int, free: int, candidates: Sequence[VictimView]) -> tuple[str, ...] | None:
    """The resident models to release so `need` bytes fit, or None if no set suffices.

    Order of preference: no victim with queued requests, then no busy victim (a drain
    delays the switch), then the lowest summed GreedyDual value, then fewer bytes moved.
    """
    if need <= free:
        return ()
    if free + sum(c.bytes for c in candidates) < need:
        return None
    if len(candidates) > EXACT_VICTIM_SEARCH_LIMIT:
        return _greedy_victims(need, free, candidates)
    best: tuple[tuple[int, int, float, int], tuple[str, ...]] | None = None
    for size in range(1, len(candidates) + 1):
        for subset in combinations(candidates, size):
            if free + sum(c.bytes for c in subset) < need:
                continue
            key = (
                sum(1 for c in subset if c.queued),
                sum(1 for c in subset if c.busy),
                sum(c.value for c in subset),
                sum(c.bytes for c in subset),
            )
            if best is None or key < best[0]:
                best = (key, tuple(c.id for c in subset))
    return None if best is None else best[1]


def _greedy_victims(need: int, free: int, candidates: Sequence[VictimView]) -> tuple[str, ...]:
    chosen: list[str] = []
    for c in sorted(candidates, key=lambda c: (c.queued > 0, c.busy, c.value / max(c.bytes, 1))):
        if free >= need:
            break
        chosen.append(c.id)
        free += c.bytes
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class HostView:
    """A model whose weights sleep in host RAM and may be dropped to make room: `value` is its
    `host_copy_value`; stop_only: its engine cannot unload, so dropping the copy stops it."""

    id: str
    bytes: int
    value: float
    stop_only: bool


@dataclass(frozen=True, slots=True)
class ReleasePlan:
    """How to release one model, plus the host copies to drop first to make room."""

    release: Sleep | Unload | Stop
    drop_from_host: tuple[Sleep | Unload | Stop, ...] = ()


def choose_release(
    profile: ModelProfile, value: float, host_free: int, host_models: Sequence[HostView]
) -> ReleasePlan:
    """Prefer sleep (cheapest way back) while host RAM allows, across tiers by GreedyDual value.

    `value` and each host copy's value are `host_copy_value`s (what a copy saves on the way
    back). A host copy with a lower value than the model being released is dropped to make
    room; otherwise the model itself goes to disk (unload keeps the process, stop does not).
    The caller offers only copies that may be dropped (never one being woken or prefetched, nor
    the model a switch is for).
    """
    if profile.supports_sleep:
        if profile.host_bytes <= host_free:
            return ReleasePlan(Sleep(profile.id))
        room = host_free
        drops: list[Sleep | Unload | Stop] = []
        for h in sorted(host_models, key=lambda h: h.value):
            if room >= profile.host_bytes or h.value >= value:
                break
            drops.append(Stop(h.id) if h.stop_only else Unload(h.id))
            room += h.bytes
        if room >= profile.host_bytes:
            return ReleasePlan(Sleep(profile.id), tuple(drops))
    if profile.supports_unload:
        return ReleasePlan(Unload(profile.id))
    return ReleasePlan(Stop(profile.id))


@dataclass(frozen=True, slots=True)
class SwitchView:
    """The waiting model that does not fit, as the switch trigger sees it."""

    credit_s: float
    max_wait_s: float
    urgent: bool


RESTORE_MIN_PROBABILITY = 0.5
RESTORE_MIN_OBSERVATIONS = 5.0


@dataclass(frozen=True, slots=True)
class RestoreView:
    """An idle GPU's gamble: bring back `target` (probability `p_target` of being asked for
    next; `swap_s` saved then: the victims' releases and its wake) at the cost of the victims
    (each with its probability of being next and what bringing it back would cost)."""

    p_target: float
    swap_s: float
    victims: tuple[tuple[float, float], ...]  # (probability next, seconds to bring it back)


def restore_pays(v: RestoreView) -> bool:
    """Whether the expected seconds saved exceed the expected seconds lost."""
    lost = sum(p * cost for p, cost in v.victims)
    return v.p_target >= RESTORE_MIN_PROBABILITY and v.p_target * v.swap_s > lost


def should_switch(
    target: SwitchView, victims: Sequence[VictimView], drain_s: float, settings: PolicySettings
) -> bool:
    """The switch triggers, in order: urgency, idle victims, a cheap drain.

    Urgency: the target is pinned, or its oldest request has waited max_wait (counted
    only while its model was neither serving nor loading); this overrides the protection
    the resident batch otherwise enjoys. Idle: the victims have no work at all, queued or
    running (and the target's head has waited `idle_switch_hold_s`). Cheap drain (optional):
    the victims have nothing queued and what runs is expected to end within `drain_below_s`.
    """
    if target.urgent or target.credit_s >= target.max_wait_s:
        return True
    if any(v.queued for v in victims):
        return False
    if not any(v.busy for v in victims):
        return target.credit_s >= settings.idle_switch_hold_s
    return settings.drain_below_s is not None and drain_s <= settings.drain_below_s
