"""Fake effects for driving the pure residency core synchronously in tests.

`Driver` plays the residency loop: it feeds events with explicit times, records every
action, and keeps its own view of what the fake engines hold so tests can assert that
the core never over-commits VRAM, never releases a busy engine and only dispatches to a
resident one. Nothing here sleeps or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from appliance.scheduler import (
    GB,
    Action,
    ActionFailed,
    ActionKind,
    Dispatch,
    EngineReady,
    Event,
    ForceStop,
    MemoryBudget,
    ModelKind,
    ModelProfile,
    PolicySettings,
    Preempt,
    Prefetch,
    Prefetched,
    Reject,
    ReleaseDone,
    Request,
    RequestArrived,
    RequestCancelled,
    RequestDone,
    ResidencyCore,
    Sleep,
    Start,
    Stop,
    SwapCosts,
    Tick,
    Tier,
    Unload,
    Wake,
)

COSTS = SwapCosts(wake_s=1.0, cold_start_s=60.0, load_s=4.0, release_s=0.05)


def profile(
    model: str,
    gb: float,
    kind: ModelKind = ModelKind.OTHER,
    *,
    host_gb: float | None = None,
    **kw: object,
) -> ModelProfile:
    return ModelProfile(
        id=model,
        kind=kind,
        footprint_bytes=int(gb * GB),
        host_bytes=int((host_gb if host_gb is not None else gb) * GB),
        costs=COSTS,
        **kw,  # type: ignore[arg-type]
    )


def box() -> list[ModelProfile]:
    """The reference box: a 21.7 GB LLM (weights + KV), SD3.5 fp8 14.8 GB, XTTS 3.4 GB."""
    return [
        profile("llm", 21.7, ModelKind.LLM, host_gb=19.3, concurrency=8, max_wait_s=60.0),
        profile("image", 14.8, ModelKind.IMAGE, max_wait_s=30.0),
        profile("speech", 3.4, ModelKind.SPEECH, host_gb=1.9, max_wait_s=30.0),
    ]


@dataclass
class Driver:
    core: ResidencyCore
    budget_bytes: int
    actions: list[Action] = field(default_factory=list)
    resident: dict[str, str] = field(default_factory=dict)  # model -> "loading" | "vram" | "releasing"
    running: dict[str, set[str]] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)  # sleeping engines' VRAM (CUDA contexts)
    half_awake: set[str] = field(default_factory=set)  # weights prefetched, the rest still asleep
    now: float = 0.0

    @classmethod
    def create(
        cls,
        profiles: Iterable[ModelProfile],
        vram_gb: float = 22.5,
        host_gb: float = 40.0,
        settings: PolicySettings | None = None,
        tiers: dict[str, Tier] | None = None,
        measured: dict[str, int] | None = None,
    ) -> Driver:
        plist = list(profiles)
        core = ResidencyCore(
            plist, MemoryBudget(int(vram_gb * GB), int(host_gb * GB)), settings, measured=measured, tiers=tiers
        )
        d = cls(core, int(vram_gb * GB))
        for model, tier in (tiers or {}).items():
            if tier is Tier.VRAM:
                d.resident[model] = "vram"
        return d

    # ---------------------------------------------------------------- feeding

    def feed(self, event: Event) -> list[Action]:
        self.now = event.now
        out = self.core.handle(event)
        for action in out:
            self._check(action)
        self.actions.extend(out)
        return out

    def arrive(self, rid: str, model: str, at: float, **kw: object) -> list[Action]:
        return self.feed(RequestArrived(at, Request(rid, model, at, **kw)))  # type: ignore[arg-type]

    def done(self, rid: str, at: float) -> list[Action]:
        for jobs in self.running.values():
            jobs.discard(rid)
        return self.feed(RequestDone(at, rid))

    def cancel(self, rid: str, at: float) -> list[Action]:
        for jobs in self.running.values():
            jobs.discard(rid)
        return self.feed(RequestCancelled(at, rid))

    def ready(self, model: str, at: float) -> list[Action]:
        assert self.resident.get(model) == "loading", f"{model} was not being activated"
        self.resident[model] = "vram"
        return self.feed(EngineReady(at, model))

    def released(self, model: str, at: float, held_gb: float = 0.0) -> list[Action]:
        """The release of `model` verified; its engine still holds `held_gb` (a slept CUDA context)."""
        if held_gb:
            self.held[model] = int(held_gb * GB)
        if model not in self.resident:  # a sleeping engine stopped: its process's context is gone
            assert self.held.pop(model, 0), f"{model} held nothing to release"
            for other in [m for m in self.held if self._process(m) == self._process(model)]:
                del self.held[other]
            return self.feed(ReleaseDone(at, model, 0))
        assert self.resident.get(model) == "releasing", f"{model} was not being released"
        del self.resident[model]
        return self.feed(ReleaseDone(at, model, int(held_gb * GB)))

    def prefetched(self, model: str, at: float) -> list[Action]:
        assert model in self.half_awake, f"{model} was not being prefetched"
        return self.feed(Prefetched(at, model))

    def prefetch_declined(self, model: str, at: float) -> list[Action]:
        """The driver turned the Prefetch down before touching the engine: it still sleeps whole."""
        assert model in self.half_awake, f"{model} was not being prefetched"
        self.half_awake.discard(model)
        self.held[model] -= self.core.ledger.slots[model].profile.prefetch_bytes
        return self.feed(ActionFailed(at, model, ActionKind.PREFETCH, "too little free", engine_untouched=True))

    def tick(self, at: float) -> list[Action]:
        return self.feed(Tick(at))

    # ------------------------------------------------------------- checking

    def _check(self, action: Action) -> None:
        """The fake engines refuse what a real one could not do."""
        m = action.model
        match action:
            case Start() | Wake():
                assert m not in self.resident, f"{action} while {m} is {self.resident[m]}"
                self.resident[m] = "loading"
                self.held.pop(m, None)  # the engine's context is part of its footprint again
                self.half_awake.discard(m)
                used = sum(self.core.footprints.of(x) for x in self.resident) + self._contexts()
                assert used <= self.budget_bytes, f"{action} over the VRAM budget: {used}"
            case Prefetch():
                assert m not in self.resident and m not in self.half_awake, f"{action} twice or while resident"
                self.half_awake.add(m)
                self.held[m] = self.held.get(m, 0) + self.core.ledger.slots[m].profile.prefetch_bytes
                used = sum(self.core.footprints.of(x) for x in self.resident) + self._contexts()
                assert used <= self.budget_bytes, f"{action} over the VRAM budget: {used}"
            case Sleep() | Unload() | Stop():
                assert isinstance(action, Stop) or m not in self.half_awake, f"{action}: half-awake vLLM cannot sleep"
                self.half_awake.discard(m)
                if m in self.resident:
                    assert not self.running.get(m), f"{action} while {m} runs {self.running[m]}"
                    self.resident[m] = "releasing"
            case ForceStop(abandoned=rids):
                assert self.resident.get(m) == "vram", f"{action} while {m} is {self.resident.get(m)}"
                assert set(rids) == self.running.get(m, set()), f"{action} abandons other than what runs"
                self.running[m] = set()
                self.resident[m] = "releasing"
            case Dispatch(request_id=rid):
                assert self.resident.get(m) == "vram", f"dispatch of {rid} to {m} which is not resident"
                self.running.setdefault(m, set()).add(rid)
            case Preempt(request_id=rid):
                self.running[m].discard(rid)
            case Reject():
                pass

    def _process(self, model: str) -> str:
        return self.core.ledger.slots[model].profile.engine or model

    def _contexts(self) -> int:
        """What sleeping engine processes hold, once per process, none for a process that also
        serves a resident model (one ComfyUI for two checkpoints holds one context)."""
        live = {self._process(m) for m in self.resident}
        per: dict[str, int] = {}
        for m, b in self.held.items():
            p = self._process(m)
            if p not in live:
                per[p] = max(per.get(p, 0), b)
        return sum(per.values())

    # ------------------------------------------------------------- queries

    def of(self, kind: type, model: str | None = None) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind) and (model is None or a.model == model)]

    def dispatched(self) -> list[str]:
        return [a.request_id for a in self.actions if isinstance(a, Dispatch)]
