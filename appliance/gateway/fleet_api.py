"""The box endpoints a fleet router relies on (docs/fleet.md, "Box endpoints"):
`GET /health/live`, `GET /health/ready`, `GET /health/model/{id}` (open, like `/health`: HAProxy's
health checks carry no key) and `POST /api/drain` / `GET /api/drain` (admin, as every /api route
but status and whoami; the front door checks the key). `GET /v1/residency` is served by the front
door (gateway.front), beside the other /v1 routes.

Thin: each handler asks the Appliance, its residency manager or the drain (appliance.fleet.drain)
and renders the answer; it must not change residency.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse

from ..app import Appliance
from ..fleet.drain import Drain
from .errors import ModelNotFound

router = APIRouter()


def _appliance(request: Request) -> Appliance:
    app: Appliance = request.app.state.appliance
    return app


@router.get("/health/live")
async def live() -> dict[str, Any]:
    """200 while the process serves HTTP at all (even starting, draining or stopping)."""
    return {"status": "live"}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """200 only when readiness is "ready"; 503 while starting, draining or stopping."""
    state = _appliance(request).readiness
    return JSONResponse({"status": state}, status_code=200 if state == "ready" else 503)


@router.get("/health/model/{model_id}")
async def model_health(request: Request, model_id: str, loadable: bool = Query(False)) -> JSONResponse:
    """200 when `model_id` is resident (served now without loading or evicting anything); with
    `?loadable=1` also when it could be loaded now; 404 for a model this box does not configure;
    503 otherwise (and whenever the box is not ready: a router sends it nothing new)."""
    app = _appliance(request)
    if model_id not in app.config.models:
        raise ModelNotFound(f"model {model_id!r} is not configured on this box", param="model_id")
    residency = app.residency
    resident = residency.resident(model_id)
    can_load = residency.loadable(model_id)
    ok = app.readiness == "ready" and (resident or (loadable and can_load))
    body = {"model": model_id, "tier": residency.tier(model_id), "resident": resident, "loadable": can_load,
            "state": app.readiness}
    return JSONResponse(body, status_code=200 if ok else 503)


def _drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


@router.post("/api/drain")
async def start_drain(request: Request) -> dict[str, Any]:
    """Stop taking new work and jobs (readiness "draining"); what runs finishes. The progress report."""
    return await _drain(request).start()


@router.get("/api/drain")
async def drain_progress(request: Request) -> dict[str, Any]:
    """How far a drain is: requests and job attempts still in flight; `drained` once none is left."""
    return _drain(request).progress()
