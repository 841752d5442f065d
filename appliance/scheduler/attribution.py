"""Usage attribution: an engine's measured GPU memory split into per-model figures the core can
learn footprints from.

Must not: read the GPU or the core itself (the caller passes the readings and the core's view), or
decide anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from .snapshot import SlotView
from .types import Tier


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


