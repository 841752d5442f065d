"""The router's own HTTP app on 127.0.0.1:router.api_port (HAProxy forwards /api/fleet* and /fleet to it).

- `GET /api/fleet` (admin key): the boxes, their models and tiers, state, version and API-version skew,
  heartbeat age, and what HAProxy's map and servers say now.
- `POST /api/fleet/join` (`Authorization: Bearer <join token>`): what a joining box writes into its
  config and token file.
- `POST /api/fleet/boxes/{id}/drain` (admin key): out of the routing now, then the box's own
  `POST /api/drain` with the router's admin key (tokens.py), deadline DRAIN_DEADLINE_S.
- `GET /fleet`, `/fleet/fleet.js`, `/fleet/style.css`: the fleet page (no CDN assets).
- `GET /health` (open, loopback only: HAProxy sends /health to a box): 200 while HAProxy runs, else 503;
  what install.sh waits for and what the router's systemd watchdog checks.
Admin keys are the fleet's keys, checked against the shared store. It must not change routing
itself: it asks the service (service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import RouterConfig
from ..fleet import API_VERSION
from ..fleet.token import write_token
from ..gateway.errors import ApiError, Forbidden, InvalidRequest, NotFound, Unauthorized, Unavailable
from ..gateway.keys import KeyStore
from ..gateway.ui import CSP
from . import plan
from .service import RouterService
from .tokens import same

DRAIN_DEADLINE_S = 10.0
KEY_PROPAGATION_S = 5.0  # how long a 401 from a box is retried after the router made its key
UI_DIR = Path(__file__).resolve().parent / "ui"
STYLE = Path(__file__).resolve().parent.parent / "ui" / "style.css"


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return value.strip()


def compatibility(api_version: int) -> str:
    return plan.compatibility(api_version, API_VERSION)


def join_reply(service: RouterService, fleet_token: str, router_url: str) -> dict[str, Any]:
    jobs = service.cfg.jobs
    return {"store_url": service.cfg.store.url,
            "jobs": {"backend": jobs.backend, "brokers": list(jobs.brokers), "topic_prefix": jobs.topic_prefix,
                     "group": jobs.group, "partitions": jobs.partitions},
            "fleet_token": fleet_token, "router_url": router_url}


def validate_join(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("body: expected a JSON object")
    for name, kind in (("box_id", str), ("url", str), ("version", str)):
        if not isinstance(body.get(name), kind) or not body[name].strip():
            raise InvalidRequest(f"{name}: required, a non-empty string", param=name)
    if not body["url"].startswith(("http://", "https://")):
        raise InvalidRequest("url: expected http(s)://host:port", param="url")
    api_version = body.get("api_version")
    if not isinstance(api_version, int) or isinstance(api_version, bool):
        raise InvalidRequest("api_version: required, an integer", param="api_version")
    if compatibility(api_version) == "incompatible":
        raise InvalidRequest(f"api_version: {api_version} is not supported by this router "
                             f"({plan.MIN_API_VERSION}..{API_VERSION})", param="api_version")
    return body



def box_tls(cfg: RouterConfig) -> ssl.SSLContext | bool:
    """The router's own calls to an https box (a drain, which carries the router's admin key), verified
    as HAProxy verifies them (haproxy_config.tls_words): against `router.box_ca_file` when set (the
    chain, not the host name: a box's certificate names its IP), else not at all."""
    if not cfg.box_ca_file:
        return False
    ctx = ssl.create_default_context(cafile=cfg.box_ca_file)
    ctx.check_hostname = False
    return ctx

class RouterApi:
    def __init__(self, service: RouterService, fleet_token: str, join_token: str, admin_key_file: Path) -> None:
        self.service = service
        self.fleet_token = fleet_token
        self.join_token = join_token
        self.admin_key_file = admin_key_file
        self.page = {"/fleet": ((UI_DIR / "fleet.html").read_bytes(), "text/html; charset=utf-8"),
                     "/fleet/fleet.js": ((UI_DIR / "fleet.js").read_bytes(), "text/javascript; charset=utf-8"),
                     "/fleet/style.css": (STYLE.read_bytes(), "text/css; charset=utf-8")}

    async def require_admin(self, request: Request) -> None:
        presented = bearer(request)
        store = self.service.store
        if store is None:
            raise Unavailable("the key store (the registry's database) is unreachable; try again",
                              code="store_unavailable", retry_after=5)
        key = await asyncio.to_thread(KeyStore(store).verify, presented)
        if key is None:
            raise Unauthorized("invalid API key")
        if not key.admin:
            raise Forbidden("this endpoint needs an admin key")

    async def fleet(self, request: Request) -> Response:
        await self.require_admin(request)
        svc = self.service
        now = time.time()
        routes = svc.plan
        boxes = []
        for rec in svc.records:
            residency = rec.residency if isinstance(rec.residency, dict) else {}
            slot = routes.slot_of(rec.box_id)
            boxes.append({
                "box_id": rec.box_id, "url": rec.url, "state": rec.state, "version": rec.version,
                "api_version": rec.api_version, "compatibility": compatibility(rec.api_version),
                "heartbeat_age_s": round(max(0.0, now - rec.heartbeat_at), 1),
                "free_vram_bytes": residency.get("free_vram_bytes"),
                "total_vram_bytes": residency.get("total_vram_bytes"),
                "models": {m: {"tier": v.get("tier"), "queue": v.get("queue")}
                           for m, v in sorted((residency.get("models") or {}).items()) if isinstance(v, dict)},
                "slot": None if slot is None else f"b{slot + 1}",
                "drained_by_router": rec.box_id in svc.draining})
        versions = sorted({rec.version for rec in svc.records})
        api_versions = sorted({rec.api_version for rec in svc.records})
        return JSONResponse({
            "api_version": API_VERSION, "min_api_version": plan.MIN_API_VERSION, "boxes": boxes,
            "version_skew": len(versions) > 1 or len(api_versions) > 1, "versions": versions,
            "api_versions": api_versions,
            "incompatible": sorted(b["box_id"] for b in boxes if b["compatibility"] == "incompatible"),
            "registry": {"readable": svc.registry_error is None, "error": svc.registry_error,
                         "read_age_s": None if svc.registry_read_at is None else round(now - svc.registry_read_at, 1)},
            "routes": {m: sorted(ids) for m, ids in sorted(routes.members.items())},
            "resident_only": sorted(routes.resident), "fallback": routes.fallback,
            "haproxy": await svc.haproxy_view()})

    async def join(self, request: Request) -> Response:
        if not same(bearer(request), self.join_token):
            raise Unauthorized("invalid join token", code="invalid_join_token")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise InvalidRequest("body: not valid JSON") from None
        validate_join(body)
        router_url = f"{'https' if self.service.cfg.router.tls_pem else 'http'}://{request.headers.get('host', '')}"
        return JSONResponse(join_reply(self.service, self.fleet_token, router_url))

    async def drain(self, request: Request) -> Response:
        await self.require_admin(request)
        box_id = request.path_params["box_id"]
        record = next((r for r in self.service.records if r.box_id == box_id), None)
        if record is None:
            raise NotFound(f"box_id: no live box {box_id!r} in the registry", param="box_id")
        admin_key = await asyncio.to_thread(self._admin_key)
        await self.service.drain(box_id)
        loop = asyncio.get_running_loop()
        until = loop.time() + KEY_PROPAGATION_S
        try:
            async with httpx.AsyncClient(timeout=DRAIN_DEADLINE_S, verify=box_tls(self.service.cfg.router)) as client:
                while True:
                    reply = await client.post(record.url.rstrip("/") + "/api/drain",
                                              headers={"Authorization": f"Bearer {admin_key}"})
                    # A key just made reaches a box's key cache within its recheck (about 1 s).
                    if reply.status_code != 401 or loop.time() >= until:
                        break
                    await asyncio.sleep(0.25)
        except httpx.HTTPError as exc:
            raise ApiError(f"box {box_id}: drain request failed: {type(exc).__name__}", status=502,
                           code="box_unreachable") from None
        try:
            answer = reply.json()
        except ValueError:
            answer = {"body": reply.text[:200]}
        status = 200 if reply.status_code < 300 else 502
        return JSONResponse({"box_id": box_id, "box_status": reply.status_code, "box": answer}, status_code=status)

    def _admin_key(self) -> str:
        """The router's own admin key in the shared store (created once, kept in admin_key_file, 0600):
        what it presents to a box's POST /api/drain."""
        store = self.service.store
        if store is None:
            raise Unavailable("the key store (the registry's database) is unreachable; try again",
                              code="store_unavailable", retry_after=5)
        keys = KeyStore(store)
        with contextlib.suppress(OSError):
            key = self.admin_key_file.read_text().strip()
            found = keys.verify(key) if key else None
            if found is not None and found.admin:
                return key
        _, key = keys.create("router", admin=True)
        write_token(self.admin_key_file, key)
        return key

    async def health(self, request: Request) -> Response:
        up = self.service.haproxy.running
        return JSONResponse({"status": "ok" if up else "haproxy not running"}, status_code=200 if up else 503)

    async def static(self, request: Request) -> Response:
        body, ctype = self.page[request.url.path]
        return Response(body, media_type=ctype, headers={"Cache-Control": "no-cache", "Content-Security-Policy":
                                                         CSP.decode(), "X-Content-Type-Options": "nosniff"})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


def build_app(api: RouterApi) -> Starlette:
    routes = [Route("/api/fleet", api.fleet, methods=["GET"]),
              Route("/api/fleet/join", api.join, methods=["POST"]),
              Route("/api/fleet/boxes/{box_id}/drain", api.drain, methods=["POST"]),
              Route("/health", api.health, methods=["GET"]),
              *(Route(path, api.static, methods=["GET"]) for path in api.page)]
    return Starlette(routes=routes, exception_handlers={ApiError: _api_error})
