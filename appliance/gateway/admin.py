"""Operator routes: `/health` (open), `/api/status`, engine start/stop/restart, engine logs.

Thin: each handler asks the Appliance (the owner of the state) and renders the answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from ..app import Appliance
from .errors import NotFound, Unavailable


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


@router.get("/api/engines/{name}/logs")
async def engine_logs(request: Request, name: str, tail: int = Query(200, ge=0, le=5000)) -> dict[str, Any]:
    eng = _engine(_appliance(request), name)
    return {"engine": name, "lines": eng.process.output.tail(tail)}
