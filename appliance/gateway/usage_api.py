"""`GET /api/usage`: what the API was used for, read from the store (admin scope, checked by
gateway.front).

Filters: `from` and `to` (Unix seconds or ISO dates/times, UTC), `key` (key id), `model`. Answers the
per-day totals per model (requests, errors, tokens in and out, images, audio seconds, GPU-seconds,
and cost: GPU-seconds at `server.hourly_price_usd` per hour), the totals per (key, model), and the
`recent` raw records. Pending records are flushed first, so a request that just finished is counted.
It must not write anything.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request

from ..app import Appliance
from .errors import InvalidRequest

router = APIRouter()
_SUMMED = ("requests", "errors", "tokens_in", "tokens_out", "images", "audio_s", "gpu_s")


def parse_when(value: str | None, param: str) -> float | None:
    """Unix seconds or an ISO 8601 date/time (UTC when no zone is given)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{param}: must be Unix seconds or an ISO date/time, got {value!r}",
                             param=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def cost(gpu_s: float, hourly_price_usd: float) -> float:
    return round(gpu_s / 3600.0 * hourly_price_usd, 6)


@router.get("/api/usage")
async def usage(request: Request, recent: int = Query(50, ge=0, le=10_000),
                since: str | None = Query(None, alias="from"), until: str | None = Query(None, alias="to"),
                key: str | None = Query(None), model: str | None = Query(None)) -> dict[str, Any]:
    appliance: Appliance = request.app.state.appliance
    start, end = parse_when(since, "from"), parse_when(until, "to")
    if start is not None and end is not None and end <= start:
        raise InvalidRequest("to: must be later than from", param="to")
    price = appliance.config.server.hourly_price_usd
    await appliance.usage.flush()
    store = appliance.store
    rows_by_key = await asyncio.to_thread(store.usage_days, since=start, until=end, key_id=key, model=model)
    rows = await asyncio.to_thread(store.usage_recent, since=start, until=end, key_id=key, model=model,
                                   limit=recent) if recent else []
    per_day: dict[tuple[str, str], dict[str, Any]] = {}
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows_by_key:
        for slot, table, head in (((row["day"], row["model"]), per_day, {"day": row["day"], "model": row["model"]}),
                                  ((row["key_id"] or "-", row["model"]), totals,
                                   {"key_id": row["key_id"], "model": row["model"]})):
            acc = table.setdefault(slot, {**head, **dict.fromkeys(_SUMMED, 0)})
            for field in _SUMMED:
                acc[field] += row[field]
    for acc in (*per_day.values(), *totals.values()):
        acc["cost_usd"] = cost(acc["gpu_s"], price)
    return {"from": start, "to": end, "key": key, "model": model, "hourly_price_usd": price,
            "days": [per_day[k] for k in sorted(per_day)], "totals": [totals[k] for k in sorted(totals)],
            "recent": rows}
