"""Operator routes: `/health` (open), `/api/status`, engine start/stop/restart, engine logs, model
downloads (`POST /api/models/{id}/pull`, `GET /api/downloads`) and the event stream (`GET /api/events`).

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
from ..pull import LicenceRequired
from .errors import ApiError, Forbidden, NotFound, Unavailable

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
