"""The router's fleet page (appliance/router/ui/) in real headless Chromium (Debian's /usr/bin/chromium driven
by Playwright for Python, as tests/gateway/test_webui_browser.py does; test.sh installs both), served by a real
`appliance router` (real HAProxy, the registry in a real PostgreSQL) in front of fake boxes
(tests/fleet/fake_boxes.py) of three box API versions (the router is started as API 3, routing to API 2 and
later: tests/fleet/router_harness.py).

A user signs in with a fleet admin key and sees every box with its models and tiers, its state, version and
API compatibility, the version skew; presses a box's Drain button and the box is drained through the
router's API (the router asks the box with its own admin key). Every request the page makes stays on the
router's origin, and the key never reaches a URL. Screenshots go to build/ui-artifacts/ (or
$APPLIANCE_UI_ARTIFACTS).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright_api  # test.sh installs it (never `playwright install`)
import pytest
from backing_services import pg_schema_url
from standins.launch import wait_until

from appliance.gateway.keys import KeyStore
from appliance.store import open_store
from fleet.fake_boxes import FakeBox
from fleet.router_harness import Router

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
WAIT_MS = 30_000
ARTIFACTS = Path(os.environ.get("APPLIANCE_UI_ARTIFACTS", ROOT / "build" / "ui-artifacts"))
BOXES = {  # name: (models and tiers, version, API version, free GB)
    "gpu-new": ({"llama": "vram", "whisper": "host"}, "2.0.0", 3, 8),
    "gpu-old": ({"sd": "vram", "llama": "disk"}, "1.9.0", 2, 12),
    "gpu-stale": ({"mistral": "vram"}, "1.0.0", 1, 20),
}


def test_the_fleet_page_lists_the_boxes_and_its_drain_button_drains_one(tmp_path: Path, pg_database: str) -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: test.sh installs it (apt-get install chromium)"
    url = pg_schema_url(pg_database)
    store = open_store(url, None)
    boxes = {name: FakeBox(name, {m for m, t in spec[0].items() if t == "vram"}, free_gb=spec[3])
             for name, spec in BOXES.items()}
    router = Router(tmp_path, url, expire_s=600, api_versions=(3, 2))
    try:
        for name, (models, version, api, _) in BOXES.items():
            store.put_box(boxes[name].record(models, version=version, api_version=api))
        _, admin = KeyStore(store).create("ops", admin=True)
        _, user = KeyStore(store).create("user")
        router.start()
        with _browser() as ctx:
            requests: list[str] = []
            ctx.on("request", lambda req: requests.append(req.url))
            page = ctx.new_page()
            page.on("dialog", lambda dialog: dialog.accept())  # "Drain gpu-old?"
            page.goto(router.url + "/fleet")

            # A user key is not enough: the page says so and stays on the sign-in form.
            page.fill("#signin-key", user)
            page.click("#signin-form button[type=submit]")
            page.wait_for_function("() => document.querySelector('#signin-error').textContent.length > 0")
            assert "admin key" in page.inner_text("#signin-error")
            assert page.is_visible("#signin") and not page.is_visible("#fleet")

            page.fill("#signin-key", admin)
            page.click("#signin-form button[type=submit]")
            page.wait_for_selector("#fleet:not([hidden])")
            page.wait_for_function("() => document.querySelectorAll('#boxes tr').length === 3")
            rows = {r.query_selector("td").inner_text().split("\n")[0]: r for r in page.query_selector_all("#boxes tr")}
            assert set(rows) == set(BOXES)
            for name, (models, version, api, _) in BOXES.items():
                cells = [c.inner_text() for c in rows[name].query_selector_all("td")]
                assert boxes[name].url in cells[0]
                assert cells[1] == "ready"
                assert cells[3] == version and cells[4].startswith(f"{api} (")
                for model, tier in models.items():
                    assert f"{model}: {tier}" in cells[7], (name, cells[7])
            api_cells = {n: r.query_selector_all("td")[4].inner_text() for n, r in rows.items()}
            assert api_cells == {"gpu-new": "3 (current)", "gpu-old": "2 (older, compatible)",
                                 "gpu-stale": "1 (incompatible)"}
            skew = page.inner_text("#skew")
            assert "Version skew" in skew and "1.0.0, 1.9.0, 2.0.0" in skew and "1, 2, 3" in skew
            assert "gpu-stale" in skew  # named as not routed to
            routes = page.inner_text("#routes")
            assert "llama" in routes and "sd" in routes and "mistral" not in routes  # only gpu-stale holds it
            def haproxy_cells() -> dict[str, str]:
                return {r.query_selector("td").inner_text().split("\n")[0]: r.query_selector_all("td")[2].inner_text()
                        for r in page.query_selector_all("#boxes tr")}
            # HAProxy's own view of each box's slot: health-checked UP, the incompatible one held in MAINT
            wait_until(lambda: haproxy_cells() == {"gpu-new": "UP", "gpu-old": "UP", "gpu-stale": "MAINT"},
                       deadline_s=10, message="HAProxy's view on the page")
            _shots(page, "fleet")

            # Drain gpu-old with its button: through the router's API, which asks the box with its own key.
            rows["gpu-old"].query_selector("button").click()
            wait_until(lambda: boxes["gpu-old"].draining, deadline_s=15, message="the box asked to drain")
            assert KeyStore(store).verify(boxes["gpu-old"].drained_with[0].removeprefix("Bearer ")).admin  # type: ignore[union-attr]
            page.wait_for_function("() => [...document.querySelectorAll('#boxes tr')].some("
                                   "r => r.innerText.startsWith('gpu-old') && r.innerText.includes('(drained)'))")
            status, doc = router.api("/api/fleet", admin)
            assert status == 200
            assert {b["box_id"]: b["drained_by_router"] for b in doc["boxes"]} == {
                "gpu-new": False, "gpu-old": True, "gpu-stale": False}
            assert "sd" not in doc["routes"] or "gpu-old" not in doc["routes"]["sd"]
            assert page.inner_text("#error") == ""
            drained_row = next(r for r in page.query_selector_all("#boxes tr") if r.inner_text().startswith("gpu-old"))
            assert drained_row.query_selector("button").is_disabled()  # drained: nothing more to press
            _shots(page, "fleet-drained")
            page.click("#signout")
            page.wait_for_selector("#signin:not([hidden])")
        strays = [u for u in requests if not u.startswith((router.url + "/", "data:", "blob:"))]
        assert not strays, f"the page asked beyond the router's origin: {strays}"
        assert not any(admin in u or user in u for u in requests), "a key reached a URL"
    finally:
        router.stop()
        for b in boxes.values():
            b.close()
        store.close()
    assert admin not in router.log.read_text(), "a key reached the router's log"


class _browser:
    """Chromium with a throwaway profile, closed on exit."""

    def __enter__(self) -> playwright_api.BrowserContext:
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.pw = playwright_api.sync_playwright().start()
        self.ctx = self.pw.chromium.launch_persistent_context(self.profile, executable_path=CHROMIUM, headless=True,
                                                              args=ARGS)
        self.ctx.set_default_timeout(WAIT_MS)
        return self.ctx

    def __exit__(self, *exc: object) -> None:
        import shutil

        try:
            self.ctx.close()
        finally:
            self.pw.stop()
            shutil.rmtree(self.profile, ignore_errors=True)


def _shots(page: playwright_api.Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("laptop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
        page.set_viewport_size(size)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})


@pytest.fixture(autouse=True)
def _no_state_dir_from_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("APPLIANCE_STATE_DIR", raising=False)
    yield
