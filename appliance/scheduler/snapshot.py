"""Read-only views of the core's state, for status pages, metrics, tests and the simulator.

Owns: `CoreSnapshot` and `SlotView`, frozen copies taken by `ResidencyCore.snapshot()`.

Must not: reference the live slots (a snapshot never changes after it is taken).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.scheduler.types import Tier


@dataclass(frozen=True, slots=True)
class SlotView:
    tier: Tier
    phase: str
    engine_up: bool
    draining: bool
    queued: int
    in_flight: int
    footprint_bytes: int
    prefetched_bytes: int = 0
    oldest_arrival: float | None = None  # the queue head's arrival (the core's clock); None: empty queue


@dataclass(frozen=True, slots=True)
class CoreSnapshot:
    now: float
    models: Mapping[str, SlotView]
    vram_used_bytes: int
    vram_budget_bytes: int
    host_used_bytes: int
    host_budget_bytes: int
    plan_target: str | None
