"""Mutable per-model runtime state of the residency core.

Owns: `ModelSlot`, one per configured model: its tier and transition phase, its queue
of waiting requests, its in-flight requests, and the bookkeeping the policy reads
(GreedyDual-Size-Frequency value, use frequency, the waiting credit of the queue head,
failure backoff, a running estimate of service time).

Must not: decide anything. Only `core.ResidencyCore` mutates slots (directly or through
the transition methods here); the policy reads them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from appliance.scheduler.history import ServiceHistory
from appliance.scheduler.types import ModelProfile, Request, Tier


class Phase(Enum):
    """Whether a residency transition is in progress (its action issued, no result yet)."""

    STEADY = "steady"
    ACTIVATING = "activating"
    PREFETCHING = "prefetching"  # a sleeping model's weights are on their way back (Prefetch)
    RELEASING = "releasing"


class InFlight(NamedTuple):
    request: Request
    since: float
    resumed: bool


@dataclass(slots=True)
class ModelSlot:
    profile: ModelProfile
    tier: Tier
    engine_up: bool = False
    phase: Phase = Phase.STEADY
    release_to: Tier | None = None
    stopping: bool = False
    draining: bool = False
    queue: deque[Request] = field(default_factory=deque)
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    resumable: set[str] = field(default_factory=set)
    held_bytes: int = 0
    # Weights a Prefetch brought back beside the held context (counted from its issue); the
    # model stays not servable (tier HOST) until its Wake allocates the rest.
    prefetched_bytes: int = 0
    # The driver declined a Prefetch (the measured free memory could not hold the weights): no
    # other before this model's next wake.
    prefetch_declined: bool = False
    # Waiting credit of the queue head: seconds it has waited while its model was neither
    # serving nor activating (the quantity the starvation bound limits). Accrues lazily.
    credit_s: float = 0.0
    credit_mark: float = 0.0
    last_used: float = 0.0
    frequency: float = 0.0
    gdsf_value: float = 0.0
    value_clock: float = 0.0  # GreedyDual's L when the model was last used (ages its host copy's value)
    failures: int = 0
    failed_until: float = 0.0
    service_s: float = 0.0
    history: ServiceHistory = field(default_factory=lambda: ServiceHistory(10.0))

    @property
    def id(self) -> str:
        return self.profile.id

    @property
    def in_vram(self) -> bool:
        """Counted in VRAM: resident, loading, or releasing but not yet verified free."""
        return self.tier is Tier.VRAM or self.phase is Phase.ACTIVATING

    @property
    def servable(self) -> bool:
        """Resident, not in transition, and still admitting work."""
        return self.tier is Tier.VRAM and self.phase is Phase.STEADY and not self.draining

    @property
    def busy(self) -> bool:
        return bool(self.in_flight)

    @property
    def has_work(self) -> bool:
        return bool(self.queue) or bool(self.in_flight)

    def accrues_credit(self) -> bool:
        return bool(self.queue) and not self.in_flight and self.phase is not Phase.ACTIVATING

    def settle_credit(self, now: float) -> None:
        """Bring the head's waiting credit up to `now` (call before any change to the slot)."""
        if self.accrues_credit() and now > self.credit_mark:
            self.credit_s += now - self.credit_mark
        self.credit_mark = now

    def restart_credit(self, now: float) -> None:
        """A new request became the queue head."""
        self.credit_s = 0.0
        self.credit_mark = now

    # ---------------------------------------------------------------- transitions

    def became_ready(self, now: float) -> None:
        self.tier, self.phase, self.engine_up = Tier.VRAM, Phase.STEADY, True
        self.prefetched_bytes, self.prefetch_declined = 0, False
        self.failures, self.draining, self.last_used = 0, False, now

    def release_verified(self, held_bytes: int | None) -> None:
        self.tier = self.release_to or Tier.DISK
        self.engine_up = not self.stopping
        self.held_bytes = (held_bytes or 0) if self.engine_up else 0
        self.prefetched_bytes = 0
        self.phase, self.release_to = Phase.STEADY, None
        self.stopping = self.draining = False

    def lost_engine(self) -> list[str]:
        """The engine is gone (crash or failed start): residency dropped; returns the lost in-flight ids."""
        lost = list(self.in_flight)
        self.resumable.difference_update(lost)
        self.in_flight.clear()
        if self.tier is not Tier.ABSENT:
            self.tier = Tier.DISK
        self.engine_up, self.phase, self.draining = False, Phase.STEADY, False
        self.release_to, self.stopping, self.held_bytes = None, False, 0
        self.prefetched_bytes, self.prefetch_declined = 0, False
        return lost
