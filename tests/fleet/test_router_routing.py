"""`appliance router` with real HAProxy and a real PostgreSQL registry, in front of boxes that answer
the box API (tests/fleet/fake_boxes.py): routing by model, residency changes through the runtime API,
large bodies, failover, drain, and a restart while the database is unreachable."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backing_services import pg_schema_url
from standins.launch import wait_until

from appliance.gateway.keys import KeyStore
from appliance.store import open_store
from appliance.store.sqlcore import SqlStore
from fleet.fake_boxes import FakeBox
from fleet.router_harness import Router

ROOT = Path(__file__).resolve().parent.parent.parent
MAP_DEADLINE_S = 2.0  # issue #20: a residency change reaches HAProxy's map within 2 s


def chat(router: Router, model: str | None, *, header_model: str | None = None, pad: int = 0,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    doc: dict[str, Any] = {"messages": [{"role": "user", "content": "x" * pad}]}
    if model is not None:
        doc["model"] = model  # last: HAProxy must read the whole body to find it
    hdrs = {"Content-Type": "application/json", "Authorization": "Bearer sk-app-client", **(headers or {})}
    if header_model:
        hdrs["X-Model"] = header_model
    req = urllib.request.Request(router.url + "/v1/chat/completions", data=json.dumps(doc).encode(), headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode(errors="replace")
    except OSError as e:  # URLError included: nothing listening
        return 0, str(e)


@pytest.fixture
def registry(pg_database: str) -> Iterator[tuple[str, SqlStore]]:
    url = pg_schema_url(pg_database)
    store = open_store(url, None)
    yield url, store
    store.close()


@pytest.fixture
def boxes() -> Iterator[dict[str, FakeBox]]:
    made = {"a": FakeBox("a", {"llama"}, free_gb=4), "b": FakeBox("b", {"sd"}, free_gb=20),
            "c": FakeBox("c", set(), free_gb=8)}
    yield made
    for b in made.values():
        b.close()


@pytest.fixture
def router(tmp_path: Path, registry: tuple[str, SqlStore]) -> Iterator[Router]:
    r = Router(tmp_path, registry[0], expire_s=600).start()
    yield r
    r.stop()


def box_of(router: Router, model: str) -> str | None:
    status, doc = chat(router, model)
    return str(doc["box"]) if status == 200 else None


def routed_to(router: Router, model: str, box: FakeBox) -> bool:
    return box_of(router, model) == box.name


def test_the_router_routes_by_model_and_follows_the_registry(router: Router, registry: tuple[str, SqlStore],
                                                             boxes: dict[str, FakeBox]) -> None:
    _, store = registry
    a, b, c = boxes["a"], boxes["b"], boxes["c"]
    store.put_box(a.record({"llama": "vram", "whisper": "disk"}))
    store.put_box(b.record({"sd": "vram", "whisper": "disk"}))
    store.put_box(c.record({"whisper": "disk"}))
    wait_until(lambda: len(router.haproxy_map()) == 3, deadline_s=10, message="the first map")

    for _ in range(4):
        assert chat(router, "llama") == (200, {"box": "a", "model": "llama"})
        assert chat(router, "sd")[1]["box"] == "b"
    # A model no box holds: the box with the most free VRAM (b: 20 GB), never a random one.
    assert {chat(router, "whisper")[1]["box"] for _ in range(4)} == {"b"}
    # A request with no model (a job's state, read from the shared store) goes to the fallback box.
    req = urllib.request.Request(router.url + "/v1/jobs/job_1", data=None)
    with pytest.raises(urllib.error.HTTPError) as no_model:
        urllib.request.urlopen(req, timeout=15)
    no_model.value.close()
    assert no_model.value.code == 404  # the fake box's answer to GET, not HAProxy's 503
    # The X-Model header routes without the body's model; a 64 KB body with "model" last routes too.
    assert chat(router, None, header_model="sd")[1]["box"] == "b"
    status, doc = chat(router, "llama", pad=64 * 1024)
    assert (status, doc["box"]) == (200, "a") and a.seen[-1]["size"] > 64 * 1024
    # A body larger than router.bufsize: HAProxy cannot read its model, so it goes to the fallback box
    # (most free VRAM), which reads the whole body itself; clients can send X-Model instead.
    status, doc = chat(router, "llama", pad=200 * 1024)
    assert (status, doc["box"]) == (200, "b") and b.seen[-1]["size"] > 200 * 1024
    assert chat(router, "llama", pad=200 * 1024, header_model="llama")[1]["box"] == "a"
    # HAProxy sets the fleet token (replacing a client's), marks held models resident-only and passes
    # the client's key through.
    chat(router, "llama", headers={"X-Fleet-Token": "forged"})
    last = a.seen[-1]
    assert last["token"] == router.fleet_token and last["auth"] == "Bearer sk-app-client"
    assert last["policy"] == "resident-only"
    assert {s["policy"] for s in b.seen if s["model"] == "whisper"} == {None}  # may load

    # A residency change reaches HAProxy within 2 s, through the runtime API (no reload).
    worker_pid = router.haproxy("show info")
    a.resident.discard("llama")
    c.resident.add("llama")
    store.put_box(a.record({"whisper": "disk"}))
    store.put_box(c.record({"llama": "vram", "whisper": "disk"}))
    moved_at = time.monotonic()
    wait_until(lambda: routed_to(router, "llama", c), deadline_s=MAP_DEADLINE_S, message="llama moved to c")
    print(f"residency change reached HAProxy in {time.monotonic() - moved_at:.2f} s")
    assert [line for line in router.haproxy("show info").splitlines() if line.startswith("Pid:")] == \
        [line for line in worker_pid.splitlines() if line.startswith("Pid:")]

    # A box evicting between the map and the request answers 503 (resident-only): HAProxy retries the
    # next holder, the client sees one 200.
    a.resident.add("llama")
    store.put_box(a.record({"llama": "vram"}))
    wait_until(lambda: any(s["policy"] and s["model"] == "llama" for s in a.seen[-1:]) or
               (chat(router, "llama")[1]["box"] == "a"), deadline_s=5, message="a holds llama again")
    a.resident.discard("llama")  # a evicted it, the registry does not know yet
    assert all(chat(router, "llama")[1]["box"] == "c" for _ in range(6))


def test_failover_drain_and_a_restart_without_the_database(tmp_path: Path, router: Router,
                                                           registry: tuple[str, SqlStore],
                                                           boxes: dict[str, FakeBox]) -> None:
    _, store = registry
    a, b, c = boxes["a"], boxes["b"], boxes["c"]
    for box in (a, b, c):
        box.resident = {"llama"}
        store.put_box(box.record())
    wait_until(lambda: {box_of(router, "llama") for _ in range(9)} == {"a", "b", "c"}, deadline_s=10,
               message="llama on all three boxes")

    # A box that dies (connections refused): no request is lost, the others take its traffic.
    a.close()
    results = [chat(router, "llama") for _ in range(20)]
    assert all(status == 200 and doc["box"] in ("b", "c") for status, doc in results), results
    wait_until(lambda: router.server_states().get("boxes/b1") == "DOWN" or
               "DOWN" in router.server_states().values(), deadline_s=10, message="the health check marks it down")

    # Drain through the router with an admin key: the box is asked with the router's own admin key,
    # and new work goes elsewhere at once.
    _, admin = KeyStore(store).create("ops", admin=True)
    _, user = KeyStore(store).create("user")
    assert router.api("/api/fleet/boxes/b/drain", user, "POST")[0] == 403
    done = subprocess.run([sys.executable, "-m", "appliance", "router", "upgrade-drain", "b", "--config",
                           str(router.config)], env={**os.environ, "APPLIANCE_API_KEY": admin, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["box_status"] == 200
    assert KeyStore(store).verify(b.drained_with[0].removeprefix("Bearer ")).admin  # type: ignore[union-attr]
    assert all(chat(router, "llama")[1]["box"] == "c" for _ in range(10))
    status, fleet = router.api("/api/fleet", admin)
    assert status == 200 and fleet["routes"]["llama"] == ["c"]  # a: down (health check), b: drained
    assert {bx["box_id"]: bx["drained_by_router"] for bx in fleet["boxes"]}["b"] is True
    assert fleet["haproxy"]["map"]["llama"].startswith("m") and fleet["registry"]["readable"]

    # A router restarted while PostgreSQL is unreachable routes from its last map.
    router.stop()
    router.write_config("postgresql://appliance@127.0.0.1:1/nowhere?connect_timeout=1", expire_s=600)
    router.start()
    assert all(chat(router, "llama")[1]["box"] == "c" for _ in range(5))
    wait_until(lambda: "registry unreadable, routing from the last map" in router.log.read_text(), deadline_s=30,
               message="a failed registry read")
    assert all(chat(router, "llama")[1]["box"] == "c" for _ in range(5))  # after it: the map stays
    assert router.api("/api/fleet", admin)[0] == 503  # keys live in the unreachable database


def test_more_boxes_than_slots_reloads_haproxy_without_losing_a_request(router: Router,
                                                                        registry: tuple[str, SqlStore]) -> None:
    _, store = registry
    many = [FakeBox(f"box{i:02d}", {"m"}) for i in range(10)]  # the config holds 8 slots
    try:
        for bx in many[:8]:
            store.put_box(bx.record())
        wait_until(lambda: len({box_of(router, "m") for _ in range(16)} - {None}) == 8, deadline_s=10,
                   message="eight boxes serving m")
        before = router.haproxy("show info")
        for bx in many[8:]:
            store.put_box(bx.record())
        results = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not {"box08", "box09"} <= {r for r in results if r}:
            results.append(box_of(router, "m"))
        assert None not in results  # every request answered across the reload
        assert {"box08", "box09"} <= set(results)
        pid = [line for line in router.haproxy("show info").splitlines() if line.startswith("Pid:")]
        assert pid and pid[0] not in before  # a new worker: the config grew to 16 slots
        assert "server b16 " in (router.state / "router" / "haproxy.cfg").read_text()
    finally:
        for bx in many:
            bx.close()


def test_join_answers_what_a_box_writes_and_refuses_bad_tokens_and_fields(router: Router) -> None:
    def join(token: str, body: Any) -> tuple[int, Any]:
        req = urllib.request.Request(router.url + "/api/fleet/join", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())

    good = {"box_id": "box-9", "url": "http://10.0.0.9:8080", "version": "1.2", "api_version": 1}
    status, answer = join(router.join_token, good)
    assert status == 200, answer
    assert answer["fleet_token"] == router.fleet_token and answer["store_url"].startswith("postgresql://")
    assert answer["jobs"]["backend"] == "local" and answer["router_url"] == router.url
    assert join("wrong-token", good)[0] == 401
    status, err = join(router.join_token, {**good, "url": "10.0.0.9:8080"})
    assert status == 400 and err["error"]["param"] == "url"
    status, err = join(router.join_token, {**good, "api_version": 99})
    assert status == 400 and err["error"]["param"] == "api_version" and "not supported" in err["error"]["message"]
    with urllib.request.urlopen(router.url + "/fleet", timeout=15) as page:
        assert b"/fleet/fleet.js" in page.read() and "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_tls_is_terminated_in_haproxy(tmp_path: Path, registry: tuple[str, SqlStore],
                                      boxes: dict[str, FakeBox]) -> None:
    pem = tmp_path / "router.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=router", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    pem.write_bytes((tmp_path / "cert.pem").read_bytes() + (tmp_path / "key.pem").read_bytes())
    url, store = registry
    store.put_box(boxes["a"].record({"llama": "vram"}))
    router = Router(tmp_path, url, expire_s=600, tls_pem=str(pem)).start()
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        req = urllib.request.Request(router.url + "/v1/chat/completions", data=b'{"model": "llama"}',
                                     headers={"Content-Type": "application/json"})

        def routed() -> bool:
            try:
                with urllib.request.urlopen(req, timeout=15, context=context) as r:
                    return bool(json.loads(r.read())["box"] == "a")
            except urllib.error.HTTPError as e:
                e.close()
                return False
        wait_until(routed, deadline_s=10, message="llama routed over HTTPS")
        assert boxes["a"].seen[-1]["proto"] == "https"  # the box builds its URLs with the client's scheme
        with pytest.raises(OSError):  # no plain HTTP on the TLS port (the connection is closed)
            urllib.request.urlopen(router.url.replace("https://", "http://") + "/fleet", timeout=5)
    finally:
        router.stop()


def test_a_crashed_haproxy_is_restarted_with_the_current_routes(router: Router, registry: tuple[str, SqlStore],
                                                               boxes: dict[str, FakeBox]) -> None:
    _, store = registry
    store.put_box(boxes["a"].record({"llama": "vram"}))
    store.put_box(boxes["b"].record({"sd": "vram"}))
    wait_until(lambda: box_of(router, "sd") == "b", deadline_s=10, message="sd routed")
    master = int((router.state / "router" / "haproxy.pid").read_text().split()[0])
    os.killpg(master, signal.SIGKILL)
    store.put_box(boxes["c"].record({"sd": "vram"}))  # a change while HAProxy is down
    boxes["c"].resident.add("sd")
    wait_until(lambda: {box_of(router, "sd") for _ in range(6)} == {"b", "c"}, deadline_s=20,
               message="HAProxy back with the routes")
    assert box_of(router, "llama") == "a"
    assert "HAProxy exited" in router.log.read_text()
