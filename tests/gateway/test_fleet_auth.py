"""A fleet box's /v1 door: the router's token (X-Fleet-Token, or an admin key) and the fleet-wide
rate limit counted in the shared store; unit checks with fake clocks, then daemons on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backing_services import pg_schema_url
from standins.launch import wait_until

from appliance.gateway.auth import Authenticator, KeyCache, RateLimiter, SharedRateLimiter
from appliance.gateway.errors import Forbidden, RateLimited
from appliance.gateway.keys import KeyStore
from appliance.store import StoreError, open_store

from .conftest import ROOT, Gateway, free_port, launch, to_toml, vllm_engine

TOKEN = "router-token-0123456789abcdef"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyStore]:
    backing = open_store("", tmp_path)
    yield KeyStore(backing)
    backing.close()


def test_router_token_or_admin_key_on_routed_requests(keys: KeyStore) -> None:
    _, user = keys.create("user")
    _, admin = keys.create("root", admin=True)
    auth = Authenticator(KeyCache(keys), RateLimiter(0), open_when_no_keys=False, router_token=TOKEN)
    bearer = f"Bearer {user}".encode()
    assert auth.check(bearer, admin=False, routed=True, fleet_token=TOKEN.encode()) is not None
    for wrong in (None, b"", b"router-token-0123456789abcdeX", TOKEN.encode() + b"x"):
        with pytest.raises(Forbidden) as err:
            auth.check(bearer, admin=False, routed=True, fleet_token=wrong)
        assert "router" in err.value.message and TOKEN not in err.value.message
    assert auth.check(f"Bearer {admin}".encode(), admin=False, routed=True, fleet_token=None) is not None
    assert auth.check(bearer, admin=False) is not None  # /api, /metrics: not routed, no token asked
    plain = Authenticator(KeyCache(keys), RateLimiter(0), open_when_no_keys=False)  # not in a fleet
    assert plain.check(bearer, admin=False, routed=True, fleet_token=None) is not None


async def test_shared_limit_counts_every_box_and_resets_with_the_window(tmp_path: Path) -> None:
    store = open_store("", tmp_path)
    try:
        clock = Clock(6000.0)
        boxes = [SharedRateLimiter(3, store.count_request, RateLimiter(0), clock=clock) for _ in range(2)]
        for i in range(3):
            await boxes[i % 2].admit("k1")  # two boxes, one count
        with pytest.raises(RateLimited) as err:
            await boxes[1].admit("k1")
        assert err.value.retry_after == 60.0 and "fleet" in err.value.message
        await boxes[0].admit("k2")  # another key is counted apart
        clock.now += 60
        await boxes[1].admit("k1")
    finally:
        store.close()


async def test_shared_limit_falls_back_to_the_box_while_the_store_fails() -> None:
    def failing(key_id: str, window_start: int) -> int:
        raise StoreError("connection refused")

    local = RateLimiter(2, clock=Clock(0.0))
    shared = SharedRateLimiter(100, failing, local)
    await shared.admit("k")
    await shared.admit("k")
    with pytest.raises(RateLimited):
        await shared.admit("k")  # the box's own bucket of 2


def fleet_box(tmp: Path, store_url: str, **server: Any) -> dict[str, Any]:
    return {"server": server, "store": {"url": store_url},
            "fleet": {"enabled": True, "token_file": str(tmp / "fleet.token")},
            "engines": {"vllm": vllm_engine(free_port(), gpu_memory_utilization=0.05, sleep_mode=False)},
            "models": {"qwen-test": {"engine": "vllm", "modality": "text", "vram_gb": 1.5}}}


def test_missing_token_file_stops_the_start_naming_the_setting(tmp_path: Path, pg_database: str) -> None:
    doc = fleet_box(tmp_path, pg_schema_url(pg_database))
    doc["server"] = {"state_dir": str(tmp_path / "state"), "port": free_port()}
    doc["gpu"] = {"probe": "declared", "declared_total_gb": 24}
    (tmp_path / "config.toml").write_text(to_toml(doc))
    proc = subprocess.run([sys.executable, "-m", "appliance", "serve", "--config", str(tmp_path / "config.toml")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert "fleet.token_file" in proc.stderr and str(tmp_path / "fleet.token") in proc.stderr


@pytest.fixture
def fleet_pair(tmp_path: Path, pg_database: str) -> Iterator[list[Gateway]]:
    """Two boxes of one fleet sharing a PostgreSQL schema (keys, rate-limit windows), 5 requests a minute."""
    url = pg_schema_url(pg_database)
    boxes: list[Gateway] = []
    try:
        for i, keys in enumerate(({"user": False, "admin": True}, None)):
            tmp = tmp_path / f"box{i}"
            tmp.mkdir()
            (tmp / "fleet.token").write_text(TOKEN + "\n")
            boxes.append(launch(tmp, fleet_box(tmp, url, rate_limit_per_minute=5), keys=keys))
        boxes[1].keys = boxes[0].keys
        yield boxes
    finally:
        for box in boxes:
            box.stop()


def test_fleet_box_takes_v1_only_from_the_router_and_limits_per_key_fleet_wide(fleet_pair: list[Gateway]) -> None:
    a, b = fleet_pair
    routed = {"X-Fleet-Token": TOKEN}
    direct = a.request("GET", "/v1/models")
    assert direct.status == 403 and direct.json()["error"]["code"] == "fleet_router_required"
    assert a.request("GET", "/v1/models", headers={"X-Fleet-Token": "wrong"}).status == 403
    assert a.request("GET", "/health/ready", key=None).status == 200  # health checks stay open
    assert a.request("GET", "/v1/models", key="admin").status == 200  # an admin key needs no token
    # keep the six requests below inside one minute's window: start them in its first 45 s
    wait_until(lambda: time.time() % 60 <= 45, deadline_s=20, interval_s=0.2, message="a fresh rate-limit window")
    statuses = [box.request("GET", "/v1/models", headers=routed) for box in (a, b, a, b, a, b)]
    assert [r.status for r in statuses] == [200] * 5 + [429]  # 5 a minute for "user" across both boxes
    assert "fleet" in statuses[-1].json()["error"]["message"] and "retry-after" in statuses[-1].headers
    for box in (a, b):
        assert TOKEN not in box.log()
