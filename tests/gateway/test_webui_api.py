"""The web UI's server side against a real daemon with the stand-ins: `/` and `/ui/*` served (public,
with a same-origin CSP), `/api/whoami`, key create/list/revoke over the API, the catalog, a served
model's load/release/pin/unpin through the residency manager, swaps with their duration on
/api/events, admin routes refused to a user key, and `/api/docs` offline with `/v1` in the schema."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.downloads import ProgressThrottle
from appliance.events import Event, EventBus
from appliance.gateway.openai import OpenAIRoutes
from appliance.gateway.openapi_v1 import v1_openapi
from appliance.gateway.ui import StaticUi

from .conftest import Gateway, launch, wait_until, worker_engine
from .sse import events_until

ADMIN_ROUTES = [("GET", "/api/keys"), ("POST", "/api/keys"), ("POST", "/api/keys/abc/revoke"),
                ("GET", "/api/models"), ("POST", "/api/models/qwen-test/load"),
                ("POST", "/api/models/qwen-test/release"), ("POST", "/api/models/qwen-test/pin"),
                ("POST", "/api/models/qwen-test/unpin"), ("GET", "/api/events"), ("GET", "/api/usage")]


def test_the_ui_is_served_at_the_root_without_a_key_and_talks_only_to_its_origin(gateway: Gateway) -> None:
    page = gateway.request("GET", "/", key=None)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b'src="/ui/app.js"' in page.body and b"http" not in page.body.lower().replace(b"http-equiv", b"")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    script = gateway.request("GET", "/ui/app.js", key=None)
    assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
    missing = gateway.request("GET", "/ui/nope.js", key=None)
    assert missing.status == 404 and missing.json()["error"]["message"] == "no UI file /ui/nope.js"
    assert gateway.request("POST", "/", key=None).status == 405


def test_the_ui_weighs_under_300_kb_and_fetches_nothing_from_elsewhere() -> None:
    ui = StaticUi()
    assert {"/", "/ui/app.js", "/ui/style.css", "/ui/pages/dashboard.js"} <= set(ui.files)
    assert ui.weight() < 300_000
    for url, (body, _) in ui.files.items():
        assert not re.search(rb"https?://", body), f"{url} names another origin"


def test_whoami_tells_the_ui_what_the_key_may_do(gateway: Gateway) -> None:
    user = gateway.request("GET", "/api/whoami", key="user").json()
    assert user == {"open": False, "admin": False, "key_id": user["key_id"], "name": "user"}
    assert gateway.request("GET", "/api/whoami", key="admin").json()["admin"] is True
    assert gateway.request("GET", "/api/whoami", key=None).status == 401
    assert gateway.request("GET", "/api/whoami", key="sk-app-0000-nope").status == 401


def test_a_user_key_gets_403_from_every_admin_route_of_the_ui(gateway: Gateway) -> None:
    for method, path in ADMIN_ROUTES:
        resp = gateway.request(method, path, {"name": "x"} if method == "POST" else None, key="user")
        assert resp.status == 403, (method, path, resp.body)
        assert "not an admin key" in resp.json()["error"]["message"]


def test_keys_are_created_shown_once_listed_without_secrets_and_revoked(gateway: Gateway) -> None:
    made = gateway.request("POST", "/api/keys", {"name": "from-ui"}, key="admin")
    assert made.status == 201, made.body
    secret = made.json()["key"]
    assert secret.startswith("sk-app-") and made.json()["admin"] is False
    assert gateway.request("GET", "/v1/models", key=secret).status == 200
    listed = gateway.request("GET", "/api/keys", key="admin")
    assert secret not in listed.body.decode() and b"hash" not in listed.body
    row = next(k for k in listed.json()["keys"] if k["name"] == "from-ui")
    assert row["revoked"] is None
    bad = gateway.request("POST", "/api/keys", {"name": " "}, key="admin")
    assert bad.status == 400 and bad.json()["error"]["param"] == "name"
    assert gateway.request("POST", "/api/keys/nope/revoke", key="admin").status == 404
    revoked = gateway.request("POST", f"/api/keys/{row['id']}/revoke", key="admin")
    assert revoked.status == 200 and revoked.json()["revoked"] is not None
    wait_until(lambda: gateway.request("GET", "/v1/models", key=secret).status == 401, 10, "the revoked key refused")
    assert secret not in gateway.log()


def test_the_catalog_lists_licence_and_download_state(gateway: Gateway) -> None:
    models = gateway.request("GET", "/api/models", key="admin").json()["models"]
    assert models and all({"licence", "on_disk", "download", "configured"} <= set(m) for m in models)


def _tier(gateway: Gateway, model: str) -> str:
    return str(next(m["tier"] for m in gateway.status()["models"] if m["id"] == model))


def _replayed(gateway: Gateway, kind: str) -> list[dict[str, Any]]:
    """Events of `kind` on /api/events (its replay of the recent past, then live), up to the first one."""
    return [e for e in events_until(gateway.port, gateway.keys["admin"], kind) if e["kind"] == kind]


def test_load_release_pin_unpin_go_through_the_residency_manager(gateway: Gateway) -> None:
    assert gateway.request("POST", "/api/models/nope/load", key="admin").status == 404
    loaded = gateway.request("POST", "/api/models/qwen-test/load", key="admin", timeout=90)
    assert loaded.status == 200 and loaded.json() == {"model": "qwen-test", "tier": "vram"}, loaded.body
    assert gateway.request("POST", "/api/models/qwen-test/pin", key="admin").json()["pinned"] is True
    wait_until(lambda: gateway.status()["residency"]["models"]["qwen-test"]["pinned"], 10, "pinned in the snapshot")
    pinned = gateway.request("POST", "/api/models/qwen-test/release", key="admin")
    assert pinned.status == 409 and pinned.json()["error"]["code"] == "model_pinned"
    assert gateway.request("POST", "/api/models/qwen-test/unpin", key="admin").json()["pinned"] is False
    wait_until(lambda: not gateway.status()["residency"]["models"]["qwen-test"]["pinned"], 10, "unpinned")
    released = gateway.request("POST", "/api/models/qwen-test/release", key="admin")
    assert released.status == 200, released.body
    wait_until(lambda: _tier(gateway, "qwen-test") == "host", 60, "qwen-test asleep in host RAM")
    again = gateway.request("POST", "/api/models/qwen-test/release", key="admin")
    assert again.status == 409 and again.json()["error"]["code"] == "not_resident"
    cpu = gateway.request("POST", "/api/models/minilm/pin", key="admin")
    assert cpu.status == 503 and "CPU" in cpu.json()["error"]["message"]


def test_swaps_reach_the_event_stream_with_their_duration(gateway: Gateway) -> None:
    assert gateway.request("POST", "/api/models/qwen-test/load", key="admin", timeout=90).status == 200
    swaps = _replayed(gateway, "residency.swap")
    assert swaps and all(isinstance(e["data"]["seconds"], float) and e["data"]["transition"] for e in swaps)
    assert {"oldest_wait_s", "queued", "pinned"} <= set(gateway.status()["residency"]["models"]["qwen-test"])


def test_api_docs_work_offline_and_the_schema_lists_the_v1_routes(gateway: Gateway) -> None:
    page = gateway.request("GET", "/api/docs", key=None)
    assert page.status == 200 and b"/api/docs/assets/swagger-ui-bundle.js" in page.body
    assert b"cdn" not in page.body.lower()
    js = gateway.request("GET", "/api/docs/assets/swagger-ui-bundle.js", key=None)
    assert js.status == 200 and len(js.body) > 100_000
    assert gateway.request("GET", "/api/docs/assets/../../x", key=None).status == 404
    schema = gateway.request("GET", "/api/openapi.json", key=None).json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatRequest")
    assert "/api/keys" in schema["paths"] and "/api/models/{model_id}/load" in schema["paths"]


def test_every_v1_route_the_front_door_serves_is_described() -> None:
    described = set(v1_openapi()["paths"])
    served = set(re.findall(r'"(/v1/[a-z/]+)": \("', inspect.getsource(OpenAIRoutes.__init__)))
    assert len(served) >= 6 and served <= described
    assert {"/v1/models/{model}", "/v1/jobs", "/v1/jobs/{job_id}"} <= described


@pytest.fixture()
def open_daemon(tmp_path: Path) -> Iterator[Gateway]:
    doc = {"engines": {"embed": worker_engine("embed", "all-MiniLM-L6-v2", autostart=False)},
           "models": {"minilm": {"engine": "embed", "modality": "embedding", "vram_gb": 0.2}}}
    gw = launch(tmp_path, doc)
    try:
        yield gw
    finally:
        gw.stop()


def test_an_open_loopback_daemon_lets_the_ui_in_without_a_key(open_daemon: Gateway) -> None:
    who = open_daemon.request("GET", "/api/whoami", key=None)
    assert who.status == 200 and who.json() == {"open": True, "admin": True, "key_id": None, "name": None}


def test_gpu_samples_stream_live_but_stay_out_of_the_replayed_history(gateway: Gateway) -> None:
    [sample, *_] = _replayed(gateway, "gpu.sample")  # arrives within a sample interval (2 s by default)
    assert {"total_bytes", "used_bytes", "utilization_pct", "processes"} <= set(sample["data"])
    assert {"queued", "in_flight", "oldest_wait_s"} <= set(sample["data"]["models"]["qwen-test"])
    bus = EventBus(history=10)
    bus.publish(Event("gpu.sample", "gpu", {}), remember=False)
    bus.publish(Event("engine.state", "vllm", {}))
    assert [e.kind for e in bus.recent(10)] == ["engine.state"]


def test_download_progress_per_block_no_longer_floods_the_replayed_history() -> None:
    """A pull published one `download.progress` per 1 MiB block: a 10 GB model pushed the residency
    timeline out of /api/events' 500-event replay. Now at most one per PROGRESS_EVERY_S."""
    now = [0.0]
    throttle = ProgressThrottle(every_s=0.5, clock=lambda: now[0])
    published = []
    for block in range(10_000):  # 10 GB in 1 MiB blocks over 100 s
        now[0] = block * 0.01
        published.append(throttle.admit("progress"))
    assert sum(published) == 200 and published[0]
    assert all(throttle.admit(kind) for kind in ("resolving", "file", "verified", "done", "failed"))


def test_speech_model_cards_name_their_voices_for_the_voice_picker(gateway: Gateway) -> None:
    assert gateway.request("GET", "/v1/models/voice").json()["voices"] == ["nova"]
    assert "voices" not in gateway.request("GET", "/v1/models/minilm").json()


def test_revoking_by_id_never_revokes_another_key_named_like_that_id(gateway: Gateway) -> None:
    target = gateway.request("POST", "/api/keys", {"name": "target"}, key="admin").json()
    namesake = gateway.request("POST", "/api/keys", {"name": target["id"]}, key="admin").json()
    refused = gateway.request("POST", f"/api/keys/{target['id']}/revoke", key="admin")
    assert refused.status == 409 and refused.json()["error"]["code"] == "ambiguous_key"
    assert gateway.request("GET", "/v1/models", key=namesake["key"]).status == 200
    assert gateway.request("GET", "/v1/models", key=target["key"]).status == 200
