"""`GET /api/usage`: what the API has been used for since the daemon started (admin scope, checked
by gateway.front). Reads the in-memory usage sink; the data layer's store replaces it later.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from ..usage import MemoryUsageSink
from .errors import NotFound

router = APIRouter()


def _sink(request: Request) -> MemoryUsageSink:
    sink = request.app.state.usage
    if not isinstance(sink, MemoryUsageSink):
        raise NotFound("usage is kept by the data store; this route reads the in-memory sink only")
    return sink


@router.get("/api/usage")
async def usage(request: Request, recent: int = Query(50, ge=0, le=10_000)) -> dict[str, Any]:
    sink = _sink(request)
    return {"totals": sink.totals(), "recent": [r.as_dict() for r in sink.recent(recent)]}
