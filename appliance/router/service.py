"""The router's sync loop: the one owner of the routing plan and of what HAProxy was told.

Every `router.sync_s` it reads the registry (`Store.boxes(live_within_s=fleet.expire_s)`, in a thread),
resolves the boxes' host names, computes the plan (plan.py) and brings HAProxy to it: runtime-API
commands for a change of residency, address or state; a written config and a hitless reload only when
the slot counts or a slot's TLS change. The plan is saved to <state_dir>/router/last-plan.json after
every change, and the maps are written next to it, so a router started while PostgreSQL is down
routes from its last map. When the registry cannot be read, the last plan stays in force.
It must not serve HTTP (api.py) nor manage the haproxy process (process.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config import Config
from ..fleet import API_VERSION
from ..store import BoxRecord, Store
from .commands import transition
from .haproxy_config import Paths, map_text, render, server_name
from .plan import BoxView, RoutePlan, plan_doc, plan_from_doc, plan_routes
from .process import HaproxyError, HaproxyProcess
from .runtime import RuntimeApi, RuntimeApiError

log = logging.getLogger("appliance.router")
RESOLVE_DEADLINE_S = 2.0
REGISTRY_DEADLINE_S = 10.0  # one read of the registry (opening the store included)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool


def endpoint(url: str) -> Endpoint:
    """A box URL's host, port and scheme; ValueError when it is not http(s)://host[:port]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"box url {url!r}: expected http(s)://host[:port]")
    tls = parts.scheme == "https"
    return Endpoint(parts.hostname, parts.port or (443 if tls else 80), tls)


def box_view(record: BoxRecord, address: str, ep: Endpoint) -> BoxView:
    residency = record.residency if isinstance(record.residency, dict) else {}
    models = residency.get("models")
    return BoxView(record.box_id, address, ep.port, ep.tls, record.state,
                   {str(m): dict(v) for m, v in models.items() if isinstance(v, dict) and _model_key(str(m))}
                   if isinstance(models, dict) else {},
                   int(residency.get("free_vram_bytes") or 0), record.version, record.api_version)


def _model_key(model: str) -> bool:
    """A model id HAProxy's map files can hold (no whitespace, no control characters)."""
    return bool(model) and all(c.isprintable() and not c.isspace() for c in model)


def write_atomic(path: os.PathLike[str] | str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RouterService:
    def __init__(self, cfg: Config, paths: Paths, haproxy: HaproxyProcess,
                 open_store: Callable[[], Store]) -> None:
        self.cfg = cfg
        self.paths = paths
        self.haproxy = haproxy
        self.api = RuntimeApi(paths.socket)
        self.open_store = open_store
        self.store: Store | None = None
        self.plan = RoutePlan()
        self.applied: RoutePlan | None = None  # what HAProxy holds; None = unknown (send everything)
        self.running_shape: tuple[int, int, tuple[bool, ...]] | None = None  # of the config HAProxy runs
        self.haproxy_starts = 0  # HAProxy's starts seen; a restart by its watcher resets its state
        self.records: list[BoxRecord] = []
        self.views_now: list[BoxView] = []  # the records as planned (addresses resolved)
        self.registry_error: str | None = None
        self.registry_read_at: float | None = None
        self.draining: set[str] = set()  # boxes drained through the router, out of every model
        self._drained_as: dict[str, tuple[str, int]] = {}  # drained box -> (version, api_version) then
        self._drain_seen: set[str] = set()  # drained boxes whose row has since said they are not ready
        self.resolved: dict[str, str] = {}  # host -> IP, kept when a later lookup fails
        self._stop = asyncio.Event()
        self._reading: asyncio.Future[list[BoxRecord]] | None = None  # the registry read in flight

    # -- start and stop
    async def start(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            try:
                self.plan = plan_from_doc(json.loads(self.paths.plan.read_text()))
                log.info("routing from the last plan (%d models) until the registry is read",
                         len(self.plan.map_entries()))
            except (ValueError, json.JSONDecodeError) as exc:
                log.warning("ignoring %s: %s", self.paths.plan, exc)
        await self._write_files(self.plan)
        await self.haproxy.start()
        self.applied = self.plan
        self.running_shape = self.plan.shape()
        self.haproxy_starts = self.haproxy.starts

    async def stop(self) -> None:
        self._stop.set()
        await self.haproxy.stop()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.close)

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.sync_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.cfg.router.sync_s)

    # -- one sync
    def _read(self) -> list[BoxRecord]:
        """In a worker thread: open the store when needed, read the live boxes."""
        if self.store is None:
            self.store = self.open_store()
        return self.store.boxes(self.cfg.fleet.expire_s)

    async def read_registry(self) -> list[BoxRecord] | None:
        """The live boxes, or None when the registry cannot be read within REGISTRY_DEADLINE_S (the
        database is down or unreachable): the caller keeps the last plan. A read still hanging after
        its deadline is not started again until it ends, so hung reads do not pile up."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(asyncio.to_thread(self._read))
        try:
            records = await asyncio.wait_for(asyncio.shield(self._reading), REGISTRY_DEADLINE_S)
        except Exception as exc:
            self._registry_failed(exc)
            return None
        finally:
            if self._reading.done():
                self._reading = None
        if self.registry_error is not None:
            log.info("registry readable again")
        self.registry_error = None
        self.registry_read_at = time.time()
        return records

    def _registry_failed(self, exc: BaseException) -> None:
        message = (f"{type(exc).__name__}: {exc}".splitlines() or ["?"])[0]
        if isinstance(exc, TimeoutError):
            message = f"no answer within {REGISTRY_DEADLINE_S:g} s"
        if message != self.registry_error:
            log.warning("registry unreadable, routing from the last map: %s", message)
        self.registry_error = message
        if self._reading is not None and self._reading.done():
            store, self.store = self.store, None  # reopen next time
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()

    async def _resolve(self, host: str) -> str | None:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            return host
        except OSError:
            pass
        try:
            async with asyncio.timeout(RESOLVE_DEADLINE_S):
                infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
            self.resolved[host] = str(infos[0][4][0])
        except (OSError, TimeoutError, IndexError) as exc:
            log.warning("cannot resolve box host %s: %s", host, exc)
        return self.resolved.get(host)

    async def views(self, records: list[BoxRecord]) -> list[BoxView]:
        out = []
        for rec in records:
            try:
                ep = endpoint(rec.url)
            except ValueError as exc:
                log.warning("box %s: %s", rec.box_id, exc)
                continue
            address = await self._resolve(ep.host)
            if address is not None:
                out.append(box_view(rec, address, ep))
        return out

    async def sync_once(self) -> None:
        records = await self.read_registry()
        if records is not None:
            self.records = records
            self.draining = self._still_draining(records)
            self.views_now = await self.views(records)
            plan = plan_routes(self.views_now, self.plan, await self.down_boxes(), frozenset(self.draining),
                               API_VERSION)
        else:
            plan = self.plan
        await self.apply(plan)

    def _still_draining(self, records: list[BoxRecord]) -> set[str]:
        """The boxes drained through the router that are still the box that was drained. A box comes
        back into the routing (rolling upgrade: drain, upgrade, restart) when its row went away (a clean
        stop removes it), when it reports another version or API version (upgraded), or when its row
        says "ready" again after it said it was not (restarted; its own health check decides the rest)."""
        by_id = {r.box_id: r for r in records}
        keep: set[str] = set()
        for box_id in self.draining:
            rec = by_id.get(box_id)
            if rec is None or (rec.version, rec.api_version) != self._drained_as.get(box_id):
                continue
            if rec.state != "ready":
                self._drain_seen.add(box_id)
            elif box_id in self._drain_seen:
                continue
            keep.add(box_id)
        for box_id in set(self._drained_as) - keep:
            self._drained_as.pop(box_id, None)
            self._drain_seen.discard(box_id)
        return keep

    async def down_boxes(self) -> frozenset[str]:
        """Boxes whose slot HAProxy's health check marks DOWN now (none when it cannot be asked)."""
        try:
            status = await self.api.server_status()
        except RuntimeApiError:
            return frozenset()
        return frozenset(s.box_id for i, s in enumerate(self.plan.slots)
                         if s is not None and status.get(("boxes", server_name(i)), "").startswith("DOWN"))

    async def apply(self, plan: RoutePlan) -> None:
        changed = plan != self.plan
        if self.haproxy.starts != self.haproxy_starts:  # restarted from the config file: state unknown
            self.haproxy_starts = self.haproxy.starts
            self.applied = None
        try:
            if plan.shape() != self.running_shape:
                await self._write_files(plan)
                await self.haproxy.reload()
                self.running_shape = plan.shape()
            else:
                await self.api.run_all(transition(self.applied, plan, self.paths.models_map,
                                                  self.paths.resident_map))
            self.applied = plan
        except (RuntimeApiError, OSError) as exc:
            log.error("could not bring HAProxy to the plan: %s", exc)
            self.applied = None  # resend everything next time
        except HaproxyError as exc:
            log.error("HAProxy reload failed: %s", exc)
            self.applied = None
        self.plan = plan
        if changed:
            await self._write_files(plan, config=False)

    async def _write_files(self, plan: RoutePlan, config: bool = True) -> None:
        """The maps and the plan (the last map, for a start without the registry); the config if asked."""
        write_atomic(self.paths.models_map, map_text(plan.map_entries()))
        write_atomic(self.paths.resident_map, map_text(dict.fromkeys(plan.resident, "1")))
        write_atomic(self.paths.plan, json.dumps(plan_doc(plan), indent=1))
        if config:
            text = render(self.cfg.router, self.paths, plan)
            candidate = self.paths.root / "haproxy.cfg.new"
            write_atomic(candidate, text)
            await self.haproxy.check(candidate)
            os.replace(candidate, self.paths.config)

    # -- for the API
    async def drain(self, box_id: str) -> None:
        """Take the box out of every model now (before its health check fails)."""
        self.draining.add(box_id)
        rec = next((r for r in self.records if r.box_id == box_id), None)
        if rec is not None:
            self._drained_as[box_id] = (rec.version, rec.api_version)
            self._drain_seen.discard(box_id)
        await self.apply(plan_routes(self.views_now, self.plan, await self.down_boxes(), frozenset(self.draining),
                                     API_VERSION))

    async def haproxy_view(self) -> dict[str, Any]:
        """What HAProxy's map and servers say now (for /api/fleet)."""
        try:
            models = await self.api.map_entries(self.paths.models_map)
            resident = await self.api.map_entries(self.paths.resident_map)
            status = await self.api.server_status()
        except RuntimeApiError as exc:
            return {"error": str(exc)}
        boxes = {("boxes", server_name(i)) for i, slot in enumerate(self.plan.slots) if slot is not None}
        return {"map": models, "resident": sorted(resident),  # unused slots (in MAINT) left out
                "servers": {f"{b}/{s}": st for (b, s), st in sorted(status.items())
                            if b != "router_api" and (not st.startswith("MAINT") or (b, s) in boxes)}}
