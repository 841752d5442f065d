"""A rolling upgrade with real version skew, end to end: a real `appliance router` (real HAProxy, the registry
in a real PostgreSQL) in front of boxes that answer the box API (tests/fleet/fake_boxes.py).

The router is started as a later release than this checkout would be: box API 3, still routing to API 2
(appliance.fleet.API_VERSION and appliance.router.plan.MIN_API_VERSION set in its process before the router
imports them: tests/fleet/router_harness.py). Boxes: `new` (API 3), `old` (API 2: older, compatible) and
`stale` (API 1: too old). The compatible one keeps its model's traffic, the incompatible one gets none,
/api/fleet shows the skew, and `appliance router upgrade-drain` drains one box at a time while a client
keeps sending: every request is answered, traffic moves off the drained box and back once it is
upgraded and restarted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from backing_services import pg_schema_url
from standins.launch import wait_until

from appliance.gateway.keys import KeyStore
from appliance.store import open_store
from appliance.store.sqlcore import SqlStore
from fleet.fake_boxes import FakeBox
from fleet.router_harness import Router
from fleet.test_router_routing import box_of, chat

ROOT = Path(__file__).resolve().parent.parent.parent
VERSIONS = {"new": ("2.0.0", 3), "old": ("1.9.0", 2), "stale": ("1.0.0", 1)}


@pytest.fixture
def fleet(tmp_path: Path, pg_database: str) -> Iterator[tuple[Router, SqlStore, dict[str, FakeBox]]]:
    url = pg_schema_url(pg_database)
    store = open_store(url, None)
    boxes = {"new": FakeBox("new", {"llama"}, free_gb=8), "old": FakeBox("old", {"llama"}, free_gb=6),
             "stale": FakeBox("stale", {"llama", "mistral"}, free_gb=30)}
    router = Router(tmp_path, url, expire_s=600, api_versions=(3, 2)).start()
    try:
        yield router, store, boxes
    finally:
        router.stop()
        for b in boxes.values():
            b.close()
        store.close()


def put(store: SqlStore, box: FakeBox, state: str = "ready", version: tuple[str, int] | None = None) -> None:
    v, api = version or VERSIONS[box.name]
    store.put_box(box.record(state=state, version=v, api_version=api))


class Client:
    """Sends llama requests one after another until stopped (bounded), recording every answer."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.results: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, doc = chat(self.router, "llama")
            self.results.append((time.monotonic(), status, doc["box"] if status == 200 else str(doc)[:200]))
            if self.stop.wait(0.01):  # paced, and stopped at once when told
                break

    def since(self, t: float) -> set[str]:
        return {box for at, status, box in self.results if at >= t and status == 200}

    def answered_since(self, t: float) -> int:
        return sum(1 for at, status, _ in self.results if at >= t and status == 200)

    def __enter__(self) -> Client:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def upgrade_drain(router: Router, box_id: str, admin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "router", "upgrade-drain", box_id, "--config",
                           str(router.config)], env={**os.environ, "APPLIANCE_API_KEY": admin, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_skewed_versions_route_by_compatibility_and_upgrade_drain_moves_traffic_without_loss(
        fleet: tuple[Router, SqlStore, dict[str, FakeBox]]) -> None:
    router, store, boxes = fleet
    new, old, stale = boxes["new"], boxes["old"], boxes["stale"]
    for b in (new, old, stale):
        put(store, b)
    wait_until(lambda: {box_of(router, "llama") for _ in range(8)} == {"new", "old"}, deadline_s=10,
               message="llama on the new and the older compatible box")

    # The incompatible box gets nothing: not its model's traffic, not a model only it holds (that goes to
    # the fallback, the compatible box with the most free VRAM, although stale has more).
    assert {box_of(router, "llama") for _ in range(12)} == {"new", "old"}
    assert {box_of(router, "mistral") for _ in range(4)} == {"new"}
    assert stale.seen == []

    _, admin = KeyStore(store).create("ops", admin=True)
    status, doc = router.api("/api/fleet", admin)
    assert status == 200
    compat = {b["box_id"]: (b["version"], b["api_version"], b["compatibility"]) for b in doc["boxes"]}
    assert compat == {"new": ("2.0.0", 3, "current"), "old": ("1.9.0", 2, "older, compatible"),
                      "stale": ("1.0.0", 1, "incompatible")}
    assert doc["version_skew"] and doc["versions"] == ["1.0.0", "1.9.0", "2.0.0"] and doc["api_versions"] == [1, 2, 3]
    assert (doc["api_version"], doc["min_api_version"], doc["incompatible"]) == (3, 2, ["stale"])
    assert doc["routes"]["llama"] == ["new", "old"] and "stale" not in str(doc["routes"])

    # Rolling upgrade, one box at a time, while a client keeps sending.
    with Client(router) as client:
        wait_until(lambda: len(client.results) >= 5, deadline_s=10, message="the client under way")
        for first, second in (("old", "new"), ("new", "old")):
            done = upgrade_drain(router, first, admin)
            assert done.returncode == 0, done.stdout + done.stderr
            drained_at = time.monotonic()
            wait_until(lambda t=drained_at: client.answered_since(t) >= 10, deadline_s=10,
                       message="requests after the drain")
            assert client.since(drained_at) == {second}, f"traffic still reaches {first} after its drain"
            assert boxes[first].draining
            put(store, boxes[first], state="draining")  # its heartbeat says so
            wait_until(lambda b=first: {x["box_id"]: x["state"] for x in router.api("/api/fleet", admin)[1]["boxes"]}
                       .get(b) == "draining", deadline_s=10, message="the router read the draining row")
            assert all(box_of(router, "llama") == second for _ in range(4))
            # Upgraded and restarted: back as the new release, ready; the router routes to it again.
            boxes[first].restart()
            put(store, boxes[first], state="starting", version=VERSIONS["new"])
            put(store, boxes[first], version=VERSIONS["new"])
            back_at = time.monotonic()
            wait_until(lambda b=first, t=back_at: b in client.since(t), deadline_s=10,
                       message=f"{first} back after its upgrade")
        ended = time.monotonic()
        wait_until(lambda: client.answered_since(ended) >= 3, deadline_s=10, message="a few more answers")
    lost = [r for r in client.results if r[1] != 200]
    assert not lost, lost[:5]
    assert len(client.results) > 40
    print(f"rolling upgrade: {len(client.results)} requests, none lost; "
          f"refused by draining boxes and retried elsewhere: {old.refused + new.refused}")

    status, doc = router.api("/api/fleet", admin)
    assert {b["box_id"]: b["compatibility"] for b in doc["boxes"]} == {
        "new": "current", "old": "current", "stale": "incompatible"}
    assert not any(b["drained_by_router"] for b in doc["boxes"])
    assert doc["routes"]["llama"] == ["new", "old"]
