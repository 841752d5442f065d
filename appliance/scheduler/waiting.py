"""What a waiting client is told: its model's place in line and about how long until it is served.

Owns: the estimate, a pure function of the core's snapshot of one model, its swap costs (measured
medians where the box has them, else the profile's estimates) and whether the GPU is switching to it.
The gateway shows it in the SSE comments a waiting stream gets and in `/v1/models`, so a UI can say
"loading image model, about 4 s" instead of hanging.

Must not: read a clock, probe anything or promise: it is an estimate, not a deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

from .snapshot import SlotView
from .types import SwapCosts, Tier


@dataclass(frozen=True, slots=True)
class WaitEstimate:
    tier: str
    queued: int  # requests of this model waiting for the GPU now (a new one would be behind them)
    load_s: float  # to bring the model to VRAM from where it is: 0 when resident

    def comment(self, model: str) -> str:
        """One SSE comment line's text (no newlines: the stream format allows nothing else), for a
        client whose own request is among the queued ones (the newest, as far as it knows)."""
        if self.load_s <= 0:
            return f"waiting for model {model}: resident, {self.queued} queued"
        return (f"waiting for model {model} to load: {self.tier}, position {max(1, self.queued)}, "
                f"about {max(1, round(self.load_s))} s")

    def as_dict(self) -> dict[str, object]:
        return {"tier": self.tier, "queued": self.queued, "expected_load_s": round(self.load_s, 1)}


def estimate(view: SlotView | None, costs: SwapCosts) -> WaitEstimate:
    """From the model's view in the core (None: not scheduled on the GPU, e.g. a CPU model)."""
    if view is None:
        return WaitEstimate("absent", 0, costs.cold_start_s)
    if view.tier is Tier.VRAM:
        return WaitEstimate(view.tier.value, view.queued, 0.0)
    if view.tier is Tier.HOST:
        load = costs.wake_s
    elif view.tier is Tier.DISK and view.engine_up:
        load = costs.load_s
    else:
        load = costs.cold_start_s
    return WaitEstimate(view.tier.value, view.queued, load)
