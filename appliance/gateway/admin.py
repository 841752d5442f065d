"""Operator routes: `/health` (open), `/api/status`, `/api/whoami` (what the caller's key may do, for the
web UI), engine start/stop/restart, engine logs, the catalog with each model's download state
(`GET /api/models`), a served model's load, release, pin and unpin (`POST /api/models/{id}/load` ...:
asked of the residency manager, which decides), model downloads (`POST /api/models/{id}/pull`,
`GET /api/downloads`) and the event stream (`GET /api/events`).

Thin: each handler asks the Appliance (the owner of the state) and renders the answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ..app import Appliance
from ..catalog import UnknownModel
from ..downloads import DownloadBusy
from ..pull import LicenceRequired, is_on_disk
from ..residency import LeaseError
from .errors import ApiError, Forbidden, NotFound, Unavailable
from .front import KEY_SCOPE
from .keys import ApiKey

KEEPALIVE_S = 15.0


def _appliance(request: Request) -> Appliance:
    app: Appliance = request.app.state.appliance
    return app


router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    app = _appliance(request)
    return {"status": "ok" if app.accepting else "shutting down"}


@router.get("/api/status")
async def status(request: Request) -> dict[str, Any]:
    return _appliance(request).status()


@router.get("/api/whoami")
async def whoami(request: Request) -> dict[str, Any]:
    """The caller's key as the front door found it: `open` when the API needs no key (loopback, no key
    yet; every control is then allowed, as the server allows it)."""
    key: ApiKey | None = request.scope.get(KEY_SCOPE)
    if key is None:
        return {"open": True, "admin": True, "key_id": None, "name": None}
    return {"open": False, "admin": key.admin, "key_id": key.id, "name": key.name}


@router.get("/api/models")
async def models(request: Request) -> dict[str, Any]:
    """The catalog: each model's licence, sizes, whether it is on disk, its download and, when this box
    serves it, its configured id(s) and tier."""
    app = _appliance(request)
    jobs = {d["model"]: d for d in app.downloads.status()}
    served: dict[str, list[str]] = {}
    for mid, m in app.config.models.items():
        served.setdefault(m.catalog or mid, []).append(mid)
    rows = []
    for cm in app.downloads.catalog:
        rows.append({"id": cm.id, "name": cm.name, "modality": cm.modality, "engine": cm.engine,
                     "licence": cm.licence, "licence_url": cm.licence_url,
                     "licence_acceptance": cm.licence_acceptance, "licence_accepted": cm.id in app.downloads.accepted,
                     "disk_bytes": cm.disk_bytes, "vram_bytes": cm.vram_bytes,
                     "on_disk": is_on_disk(app.downloads.models_dir, cm.id), "download": jobs.get(cm.id),
                     "configured": [{"id": mid, "tier": app.residency.tier(mid)} for mid in served.get(cm.id, [])]})
    return {"models": rows}


def _engine(app: Appliance, name: str) -> Any:
    eng = app.engines.get(name)
    if eng is None:
        raise NotFound(f"no engine named {name!r} (configured: {', '.join(sorted(app.engines)) or 'none'})",
                       param="name")
    return eng


@router.post("/api/engines/{name}/{action}")
async def engine_action(request: Request, name: str, action: str) -> dict[str, Any]:
    app = _appliance(request)
    eng = _engine(app, name)
    if action == "start":
        await app.start_engine(name)
    elif action == "stop":
        await app.stop_engine(name)
    elif action == "restart":
        await app.stop_engine(name)
        await app.start_engine(name)
    else:
        raise NotFound(f"unknown action {action!r}: use start, stop or restart", param="action")
    if not app.accepting:
        raise Unavailable("the daemon is shutting down")
    status: dict[str, Any] = eng.status()
    return status


@router.post("/api/models/{model_id}/pull", status_code=202)
async def pull(request: Request, model_id: str, accept_licence: bool = False) -> dict[str, Any]:
    """Start downloading a catalog model; progress arrives as `download.*` events on /api/events."""
    app = _appliance(request)
    try:
        job = app.downloads.start(model_id, accept_licence)
    except UnknownModel as exc:
        raise NotFound(str(exc), param="model_id", code="model_not_found") from None
    except LicenceRequired as exc:
        raise Forbidden(str(exc), param="accept_licence", code="licence_not_accepted") from None
    except DownloadBusy as exc:
        raise ApiError(str(exc), status=409, code="download_in_progress") from None
    return job.as_dict()


def _served(app: Appliance, model_id: str) -> None:
    if model_id not in app.config.models:
        known = ", ".join(sorted(app.config.models)) or "none"
        raise NotFound(f"model {model_id!r} is not served here (configured: {known})", param="model_id",
                       code="model_not_found")


def _residency_error(exc: LeaseError) -> ApiError:
    return ApiError(str(exc), status=503, code="residency_refused", param="model_id", retry_after=exc.retry_after)


def _pinned(app: Appliance, model_id: str) -> bool:
    models: dict[str, Any] = app.residency.snapshot()["models"]  # type: ignore[assignment]
    return bool(models.get(model_id, {}).get("pinned"))


@router.post("/api/models/{model_id}/load")
async def load_model(request: Request, model_id: str) -> dict[str, Any]:
    """Bring a served model into VRAM (waits like a request would, up to `server.load_deadline_s`)."""
    app = _appliance(request)
    _served(app, model_id)
    try:
        tier = await app.residency.load(model_id)
    except LeaseError as exc:
        raise _residency_error(exc) from None
    return {"model": model_id, "tier": tier}


@router.post("/api/models/{model_id}/release")
async def release_model(request: Request, model_id: str) -> dict[str, Any]:
    """Ask for the model's release from VRAM; it happens once the model is idle (watch residency events)."""
    app = _appliance(request)
    _served(app, model_id)
    if _pinned(app, model_id):
        raise ApiError(f"model {model_id!r} is pinned: unpin it first", status=409, code="model_pinned",
                       param="model_id")
    tier = app.residency.tier(model_id)
    if tier != "vram":
        raise ApiError(f"model {model_id!r} is not in VRAM (tier: {tier})", status=409, code="not_resident",
                       param="model_id")
    try:
        app.residency.release(model_id)
    except LeaseError as exc:
        raise _residency_error(exc) from None
    return {"model": model_id, "tier": tier, "release": "requested"}


async def _pin(request: Request, model_id: str, pinned: bool) -> dict[str, Any]:
    app = _appliance(request)
    _served(app, model_id)
    try:
        app.residency.pin(model_id, pinned)
    except LeaseError as exc:
        raise _residency_error(exc) from None
    return {"model": model_id, "pinned": pinned}


@router.post("/api/models/{model_id}/pin")
async def pin_model(request: Request, model_id: str) -> dict[str, Any]:
    """Keep the model in VRAM (loading it if needed) until unpinned or the daemon restarts."""
    return await _pin(request, model_id, True)


@router.post("/api/models/{model_id}/unpin")
async def unpin_model(request: Request, model_id: str) -> dict[str, Any]:
    return await _pin(request, model_id, False)


@router.get("/api/downloads")
async def downloads(request: Request) -> dict[str, Any]:
    return {"downloads": _appliance(request).downloads.status()}


@router.get("/api/events")
async def events(request: Request, history: int = Query(0, ge=0, le=500)) -> StreamingResponse:
    """Server-sent events: engine state changes, residency actions, download progress."""
    app = _appliance(request)
    queue = app.bus.subscribe()

    async def stream() -> AsyncIterator[bytes]:
        try:
            for ev in app.bus.recent(history) if history else []:
                yield f"event: {ev.kind}\ndata: {json.dumps(ev.as_dict())}\n\n".encode()
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield f"event: {ev.kind}\ndata: {json.dumps(ev.as_dict())}\n\n".encode()
        finally:
            app.bus.unsubscribe(queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/api/engines/{name}/logs")
async def engine_logs(request: Request, name: str, tail: int = Query(200, ge=0, le=5000)) -> dict[str, Any]:
    eng = _engine(_appliance(request), name)
    output = eng.process.output
    return {"engine": name, "lines": output.tail(tail), "written": output.written}
