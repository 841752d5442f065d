"""The residency summary a box publishes to the fleet (its registry row, `GET /v1/residency`).

Owns: `residency_summary(appliance)`, a cheap read of the residency manager's state (no engine call,
no GPU probe): each configured model's tier, engine, whether it is resident and whether it could be
loaded now, its queue depth, the VRAM the scheduler has free, and a generation counter that bumps on
every residency change, so a reader knows whether anything moved since its last read.

Tiers are the scheduler's (`appliance.scheduler.types.Tier`): "vram" (on the GPU), "host" (slept to
host RAM, fast to wake; a CPU model whose engine is up), "disk" (on local disk, engine stopped or
unloaded), "absent" (not downloaded, or no enabled engine here).
It must not decide anything nor change the state it reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Appliance


def residency_summary(appliance: Appliance) -> dict[str, Any]:
    """`{"box_id", "generation", "models": {id: {"tier", "engine", "resident", "loadable", "queue",
    "in_flight"}}, "free_vram_bytes", "total_vram_bytes", "state"}` (see docs/fleet.md)."""
    residency = appliance.residency
    snap = residency.core.snapshot()
    models: dict[str, dict[str, Any]] = {}
    for mid, m in appliance.config.models.items():
        view = snap.models.get(mid)
        tier = view.tier.value if view is not None else residency.tier(mid)  # a CPU model: its engine's state
        models[mid] = {
            "tier": tier,
            "engine": m.engine,
            "resident": residency.resident(mid),
            "loadable": residency.loadable(mid),
            "queue": view.queued if view is not None else 0,
            "in_flight": view.in_flight if view is not None else 0,
        }
    return {
        "box_id": appliance.box_id,
        "generation": residency.generation,
        "models": models,
        "free_vram_bytes": max(0, snap.vram_budget_bytes - snap.vram_used_bytes),
        "total_vram_bytes": appliance.ctx.gpu_total_bytes,
        "state": appliance.readiness,
    }
