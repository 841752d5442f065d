"""The routing plan: from the registry's box rows to what HAProxy should do. Pure: no I/O, no clock.

Decisions, in order, for each model some box lists:
1. the ready boxes holding it in GPU memory (tier "vram") serve it, and the request carries
   `X-Route-Policy: resident-only` so a box that has just evicted it answers 503 and HAProxy retries
   another holder;
2. else the ready boxes holding it warm (tier "host": slept or offloaded, fast to bring back);
3. else the one ready box that lists it as loadable with the most free VRAM (not a random hash:
   loading there evicts the least); ties go to the lowest box id.
A model no box lists is not in the map: HAProxy's default backend sends it to the ready box with the
most free VRAM, which answers with its own error for an unknown model.

Slots: HAProxy cannot add backends at run time, so the config holds `box_slots` server slots and
`model_slots` model backends. A box keeps its slot and a model its backend for as long as it is in
the registry (stable across syncs); when either runs out the plan grows and the caller reloads HAProxy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

MIN_API_VERSION = 1  # the oldest box API (appliance.fleet.API_VERSION of a box) this router routes to
RESIDENT_TIERS = frozenset({"vram"})  # appliance.scheduler.types.Tier.VRAM
WARM_TIERS = frozenset({"host"})  # Tier.HOST: slept or offloaded to host RAM
MIN_SLOTS = 8


@dataclass(frozen=True)
class BoxView:
    """One registry row as the router needs it (the address already resolved to an IP)."""

    box_id: str
    address: str  # an IP address (HAProxy's runtime API takes no host names)
    port: int
    tls: bool
    state: str  # the registry's state: "starting" | "ready" | "draining" | "leaving"
    models: dict[str, dict[str, Any]]  # residency summary's "models"
    free_vram_bytes: int
    version: str = ""
    api_version: int = 0


@dataclass(frozen=True)
class BoxSlot:
    box_id: str
    address: str
    port: int
    tls: bool
    admin: str  # HAProxy admin state for the box's slot: "ready" | "drain" | "maint"


@dataclass(frozen=True)
class RoutePlan:
    """Desired HAProxy state. Slot i is server `b<i+1>`, model backend j is `m<j+1>`."""

    slots: tuple[BoxSlot | None, ...] = (None,) * MIN_SLOTS
    model_backends: tuple[str | None, ...] = (None,) * MIN_SLOTS  # model id per backend
    members: dict[str, frozenset[str]] = field(default_factory=dict)  # model -> box ids that serve it
    resident: frozenset[str] = frozenset()  # models some box holds in GPU memory
    fallback: str | None = None  # box id for models in no map entry

    def slot_of(self, box_id: str) -> int | None:
        for i, s in enumerate(self.slots):
            if s is not None and s.box_id == box_id:
                return i
        return None

    def backend_of(self, model: str) -> int | None:
        try:
            return self.model_backends.index(model)
        except ValueError:
            return None

    def shape(self) -> tuple[int, int, tuple[bool, ...]]:
        """What only a reload can change: the slot counts and each slot's TLS."""
        return len(self.slots), len(self.model_backends), tuple(bool(s and s.tls) for s in self.slots)

    def map_entries(self) -> dict[str, str]:
        """models.map: model id -> backend name."""
        return {m: f"m{j + 1}" for j, m in enumerate(self.model_backends) if m is not None and m in self.members}


def compatibility(api_version: int, current: int) -> str:
    """How a box's API version relates to this router's (`current`): routed unless "incompatible"."""
    if api_version == current:
        return "current"
    if MIN_API_VERSION <= api_version < current:
        return "older, compatible"
    return "incompatible"


def admin_state(state: str) -> str:
    if state == "ready":
        return "ready"
    if state == "draining":
        return "drain"  # no new requests; those in flight finish
    return "maint"


def _grown(n_needed: int, current: int) -> int:
    size = max(current, MIN_SLOTS)
    while size < n_needed:
        size *= 2
    return size


def _assign(previous: tuple[str | None, ...], wanted: Iterable[str]) -> list[str | None]:
    """Keep every still-wanted name in its previous slot, put new names in free slots (growing)."""
    wanted_list = sorted(set(wanted))
    wanted_set = set(wanted_list)
    slots: list[str | None] = [name if name in wanted_set else None for name in previous]
    placed = {n for n in slots if n is not None}
    new = [n for n in wanted_list if n not in placed]
    size = _grown(len(placed) + len(new), len(slots))
    slots.extend([None] * (size - len(slots)))
    free = iter(i for i, n in enumerate(slots) if n is None)
    for name in new:
        slots[next(free)] = name
    return slots


def members_of(model: str, ready: list[BoxView]) -> tuple[frozenset[str], bool]:
    """(box ids serving `model`, whether some box holds it on the GPU)."""
    def tier(b: BoxView) -> str:
        return str(b.models.get(model, {}).get("tier", "absent"))

    holders = frozenset(b.box_id for b in ready if tier(b) in RESIDENT_TIERS)
    if holders:
        return holders, True
    warm = frozenset(b.box_id for b in ready if tier(b) in WARM_TIERS)
    if warm:
        return warm, False
    loadable = [b for b in ready if model in b.models and b.models[model].get("loadable", True)]
    if loadable:
        best = min(loadable, key=lambda b: (-b.free_vram_bytes, b.box_id))
        return frozenset({best.box_id}), False
    return frozenset(), False


def plan_routes(boxes: Iterable[BoxView], previous: RoutePlan, down: frozenset[str] = frozenset(),
                drained: frozenset[str] = frozenset(), api_version: int | None = None) -> RoutePlan:
    """The plan for these registry rows, keeping `previous`'s slot and backend assignments. Boxes in
    `down` (HAProxy's health check fails them) keep their slot, still checked, but serve no model:
    a model only they could load goes to the next box with the most free VRAM before their row expires.
    Boxes in `drained` (drained through the router, before their row says so) are in "drain" and
    serve no model either. With `api_version` (this router's), a box whose API is incompatible is
    treated as not ready (rolling upgrade: older compatible boxes keep serving)."""
    by_id = {b.box_id: b for b in boxes}
    if api_version is not None:
        by_id = {i: replace(b, state="incompatible")
                 if compatibility(b.api_version, api_version) == "incompatible" else b for i, b in by_id.items()}
    prev_ids = tuple(s.box_id if s else None for s in previous.slots)
    slot_ids = _assign(prev_ids, by_id)
    slots = tuple(
        None if bid is None else BoxSlot(bid, by_id[bid].address, by_id[bid].port, by_id[bid].tls,
                                         admin_state("draining" if bid in drained and by_id[bid].state == "ready"
                                                     else by_id[bid].state))
        for bid in slot_ids)
    ready = sorted((b for b in by_id.values() if b.state == "ready" and b.box_id not in down | drained),
                   key=lambda b: b.box_id)
    models = {m for b in by_id.values() for m in b.models}
    members: dict[str, frozenset[str]] = {}
    resident: set[str] = set()
    for model in sorted(models):
        serving, held = members_of(model, ready)
        if serving:
            members[model] = serving
            if held:
                resident.add(model)
    backends = tuple(_assign(previous.model_backends, members))
    fallback = min(ready, key=lambda b: (-b.free_vram_bytes, b.box_id)).box_id if ready else None
    return RoutePlan(slots, backends, members, frozenset(resident), fallback)


def plan_doc(plan: RoutePlan) -> dict[str, Any]:
    """The plan as JSON (the router's last map, kept on disk for a start without the registry)."""
    return {"slots": [None if s is None else {"box_id": s.box_id, "address": s.address, "port": s.port,
                                                "tls": s.tls, "admin": s.admin} for s in plan.slots],
            "model_backends": list(plan.model_backends),
            "members": {m: sorted(ids) for m, ids in sorted(plan.members.items())},
            "resident": sorted(plan.resident), "fallback": plan.fallback}


def plan_from_doc(doc: dict[str, Any]) -> RoutePlan:
    """The inverse of `plan_doc`; ValueError on a document it did not write."""
    try:
        slots = tuple(None if s is None else BoxSlot(str(s["box_id"]), str(s["address"]), int(s["port"]),
                                                     bool(s["tls"]), str(s["admin"])) for s in doc["slots"])
        backends = tuple(None if m is None else str(m) for m in doc["model_backends"])
        members = {str(m): frozenset(str(i) for i in ids) for m, ids in doc["members"].items()}
        fallback = doc.get("fallback")
        return RoutePlan(slots, backends, members, frozenset(str(m) for m in doc["resident"]),
                         None if fallback is None else str(fallback))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a routing plan: {exc}") from None
