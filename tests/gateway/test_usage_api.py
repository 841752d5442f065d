"""`GET /api/usage` from the store: filters, per-day totals with cost, survival across a restart,
and bad parameters refused naming the parameter."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from .conftest import launch, worker_engine

PRICE = 3.6  # USD per hour: cost_usd = gpu_s / 1000


def test_usage_survives_a_restart_and_is_filtered_and_priced(tmp_path: Path) -> None:
    doc = {"server": {"hourly_price_usd": PRICE},
           "engines": {"embed": worker_engine("embed", "all-MiniLM-L6-v2")},
           "models": {"minilm": {"engine": "embed", "modality": "embedding", "vram_gb": 0.2}}}
    gw = launch(tmp_path, doc, keys={"user": False, "admin": True})
    keys = gw.keys
    start = time.time()
    try:
        for i in range(3):
            assert gw.request("POST", "/v1/embeddings", {"model": "minilm", "input": f"x{i}"}).status == 200
        assert gw.request("POST", "/v1/embeddings", {"model": "nope", "input": "x"}).status == 404
    finally:
        gw.stop()  # a clean stop: every record is written
    again = launch(tmp_path, doc)
    again.keys = keys
    try:
        since = quote(datetime.fromtimestamp(start - 1, UTC).isoformat())  # '+00:00' must not read as a space
        usage = again.request("GET", f"/api/usage?from={since}&model=minilm&recent=10", key="admin").json()
        assert usage["hourly_price_usd"] == PRICE
        [day] = usage["days"]
        assert day["model"] == "minilm" and day["requests"] == 3 and day["tokens_in"] > 0
        assert abs(day["cost_usd"] - day["gpu_s"] * PRICE / 3600) < 1e-6 and day["gpu_s"] > 0
        assert len(usage["recent"]) == 3 and all(r["model"] == "minilm" for r in usage["recent"])
        user_id = usage["recent"][0]["key_id"]
        by_key = again.request("GET", f"/api/usage?key={user_id}", key="admin").json()
        assert {t["model"] for t in by_key["totals"]} == {"minilm", "nope"}
        later = again.request("GET", f"/api/usage?from={time.time() + 3600:.0f}", key="admin").json()
        assert later["days"] == [] and later["recent"] == []
        bad = again.request("GET", "/api/usage?from=yesterday", key="admin")
        assert bad.status == 400 and bad.json()["error"]["param"] == "from"
        backwards = again.request("GET", "/api/usage?from=2000&to=1000", key="admin")
        assert backwards.status == 400 and backwards.json()["error"]["param"] == "to"
        assert again.request("GET", "/api/usage", key="user").status == 403  # admin scope
    finally:
        again.stop()
