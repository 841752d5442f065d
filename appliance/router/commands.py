"""The runtime-API commands that take HAProxy from one plan to the next. Pure.

Order matters for requests arriving in between: addresses first, then servers that start serving,
then the map entries (a model is never mapped to a backend with no server about to serve it), then
map deletions, and last the servers that stop serving. `previous=None` (HAProxy's state unknown, e.g.
after a failed command) emits every state and map entry.
Commands are HAProxy 2.6's (management guide, section 9.3): `set server <b>/<s> addr <ip> port <p>`,
`set server <b>/<s> state ready|drain|maint`, `add map`, `set map`, `del map`.
"""

from __future__ import annotations

from pathlib import Path

from .haproxy_config import PLACEHOLDER, backend_name, server_name
from .plan import BoxSlot, RoutePlan


def _backends(plan: RoutePlan) -> list[tuple[str, frozenset[str]]]:
    """Every backend whose servers track the box slots, with the box ids it should use."""
    out = [("fallback", frozenset({plan.fallback}) if plan.fallback else frozenset())]
    for j, model in enumerate(plan.model_backends):
        ids = plan.members.get(model, frozenset()) if model is not None else frozenset()
        out.append((backend_name(j), ids))
    return out


def _addr(slot: BoxSlot | None) -> tuple[str, int]:
    return (slot.address, slot.port) if slot is not None else PLACEHOLDER


def _box_state(slot: BoxSlot | None) -> str:
    return "maint" if slot is None else slot.admin


def _member(slot: BoxSlot | None, ids: frozenset[str]) -> bool:
    return slot is not None and slot.admin != "maint" and slot.box_id in ids


def _map_changes(path: Path, old: dict[str, str], new: dict[str, str]) -> tuple[list[str], list[str]]:
    adds = [f"set map {path} {k} {v}" if k in old else f"add map {path} {k} {v}"
            for k, v in sorted(new.items()) if old.get(k) != v]
    dels = [f"del map {path} {k}" for k in sorted(old) if k not in new]
    return adds, dels


def transition(previous: RoutePlan | None, plan: RoutePlan, models_map: Path, resident_map: Path) -> list[str]:
    """Commands from `previous` to `plan` (same shape: a shape change is a reload, not commands)."""
    full = previous is None
    prev = previous or RoutePlan(slots=(None,) * len(plan.slots), model_backends=(None,) * len(plan.model_backends))
    addresses: list[str] = []
    enable: list[str] = []
    disable: list[str] = []
    prev_backends = dict(_backends(prev))
    for i, slot in enumerate(plan.slots):
        old = prev.slots[i] if i < len(prev.slots) else None
        name = server_name(i)
        if full or _addr(slot) != _addr(old):
            ip, port = _addr(slot)
            addresses.append(f"set server boxes/{name} addr {ip} port {port}")
            addresses.extend(f"set server {b}/{name} addr {ip} port {port}" for b, _ in _backends(plan))
        state = _box_state(slot)
        if full or state != _box_state(old):
            (disable if state == "maint" else enable).append(f"set server boxes/{name} state {state}")
        for backend, ids in _backends(plan):
            now = _member(slot, ids)
            before = _member(old, prev_backends.get(backend, frozenset()))
            if full or now != before:
                (enable if now else disable).append(f"set server {backend}/{name} state {'ready' if now else 'maint'}")
    old_models = {} if full else prev.map_entries()
    old_resident = {} if full else dict.fromkeys(prev.resident, "1")
    model_adds, model_dels = _map_changes(models_map, old_models, plan.map_entries())
    res_adds, res_dels = _map_changes(resident_map, old_resident, dict.fromkeys(plan.resident, "1"))
    clear = [f"clear map {models_map}", f"clear map {resident_map}"] if full else []
    return addresses + enable + clear + model_adds + res_adds + model_dels + res_dels + disable
