"""The web UI in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright for Python;
test.sh installs both, never `playwright install`) against a running daemon with the stand-ins, the
tiny workers and a local hub stand-in.

One daemon and one browser for the module; each test is one feature: sign-in and the dashboard,
chat streaming and stop, an image, speech, a pull to 100%, release and load moving a model between
tiers with the swap on the timeline, a key revoked and refused, a user key seeing no admin control
(and 403 from the server), the API page offline. Every request the page makes is recorded and must
stay on the daemon's loopback origin. Screenshots of every page (laptop and phone width, light and
dark for the dashboard) and the dashboard's first-render time (Performance API, reported not
asserted) go to build/ui-artifacts/ (or $APPLIANCE_UI_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api  # test.sh installs it (never `playwright install`)
import pytest

from .conftest import ROOT, Gateway, full_config, launch, wait_until

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 60_000
ARTIFACTS = Path(os.environ.get("APPLIANCE_UI_ARTIFACTS", ROOT / "build" / "ui-artifacts"))
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CATALOG = """
[models.tiny]
name = "Tiny test model"
modality = "text"
engine = "worker:text"
devices = ["cpu"]
disk_gb = 0.003
vram_gib = 0.0
ram_gib = 0.01
licence = "apache-2.0"
[[models.tiny.files]]
repo = "test-org/tiny-model"
include = ["*.json", "*.safetensors"]
"""


def _hub(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The Hugging Face file routes' stand-in, serving one 2.5 MB model."""
    src = tmp / "hub"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"".join(i.to_bytes(4, "big") * 16 for i in range(40_000)))
    (src / "config.json").write_text(json.dumps({"hidden_size": 32}))
    config = {"repos": {"test-org/tiny-model": {"commit": COMMIT, "files": {
        "model.safetensors": {"source": str(src / "model.safetensors"), "lfs": True},
        "config.json": {"source": str(src / "config.json"), "lfs": False}}}}, "drop_after": {}, "corrupt": []}
    (tmp / "hub.json").write_text(json.dumps(config))
    from daemon_harness import free_port

    port, cdn = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "workers" / "hf_standin.py"), "--config",
                             str(tmp / "hub.json"), "--port", str(port), "--cdn-port", str(cdn)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/_requests", timeout=1):
                return True
        except OSError:
            return False

    wait_until(up, 20, "the hub stand-in")
    return proc, url


class Box:
    """The daemon, the browser and what the page asked for."""

    def __init__(self, gw: Gateway, ctx: Any) -> None:
        self.gw = gw
        self.ctx = ctx
        self.requests: list[str] = []
        ctx.on("request", lambda req: self.requests.append(req.url))

    def page(self, key: str | None = "admin", size: dict[str, int] = LAPTOP) -> Any:
        """A new tab, signed in with `key` through the sign-in form."""
        page = self.ctx.new_page()
        page.set_viewport_size(size)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(self.gw.url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        if key is not None:
            page.fill("#signin-key", self.gw.keys.get(key, key))
            page.click("#signin-form button[type=submit]")
            page.wait_for_selector("#page h1", timeout=WAIT_MS)
        return page

    def shots(self, page: Any, name: str) -> None:
        """Screenshots at laptop and phone width."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for label, size in (("laptop", LAPTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
        page.set_viewport_size(LAPTOP)


@pytest.fixture(scope="module")
def box(module_tmp: Path) -> Iterator[Box]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: test.sh installs it (apt-get install chromium)"
    hub, hub_url = _hub(module_tmp)
    (module_tmp / "catalog.toml").write_text(CATALOG)
    doc = full_config(catalog_file=str(module_tmp / "catalog.toml"))
    doc["engines"]["vllm"]["env"] = {"VLLM_STANDIN_TOKENS_PER_S": "20"}  # a stream slow enough to stop
    gw = launch(module_tmp, doc, keys={"user": False, "admin": True},
                env={"HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "0"})  # the hub is a loopback stand-in
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        with playwright_api.sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS)
            ctx.set_default_timeout(WAIT_MS)
            b = Box(gw, ctx)
            try:
                yield b
            finally:
                ctx.close()
        strays = [u for u in b.requests if not u.startswith((gw.url + "/", "data:", "blob:"))]
        assert not strays, f"the page asked beyond the daemon's loopback origin: {strays}"
        for secret in gw.keys.values():
            assert secret not in gw.log(), "a key reached the daemon's log"
            assert not any(secret in u for u in b.requests), "a key reached a URL"
    finally:
        gw.stop()
        hub.kill()
        hub.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


def _until(page: Any, expr: str, what: str) -> None:
    """Poll a page expression (wait_for_function would eval it in the page, which the UI's CSP forbids)."""
    wait_until(lambda: page.evaluate(expr), WAIT_MS / 1000, what, interval_s=0.1)


def test_sign_in_shows_the_dashboard_with_engine_states(box: Box) -> None:
    page = box.page(key=None)
    assert page.is_visible("#signin")
    page.fill("#signin-key", "sk-app-0000-wrong")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#signin-error:has-text('not accepted')")
    page.fill("#signin-key", box.gw.keys["admin"])
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("[data-engine-state=vllm]")
    for name in ("vllm", "comfyui", "embed", "tts"):
        assert page.inner_text(f"#engines [data-engine-state={name}]").strip()
    assert page.evaluate("sessionStorage.getItem('appliance.key')") == box.gw.keys["admin"]
    assert box.gw.keys["admin"] not in page.content() and box.gw.keys["admin"] not in page.url
    page.wait_for_selector("#gpu .bar")
    render_ms = page.evaluate("performance.getEntriesByName('dashboard-rendered')[0].startTime")
    weight = page.evaluate("performance.getEntriesByType('resource').concat(performance.getEntriesByType("
                           "'navigation')).filter(e => !e.name.includes('/api/') && !e.name.includes('/v1/'))"
                           ".reduce((s, e) => s + e.decodedBodySize, 0)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard-perf.json").write_text(json.dumps({"first_render_ms": render_ms,
                                                               "page_weight_bytes": weight}))
    print(f"dashboard first render {render_ms:.0f} ms after navigation; page weight {weight} bytes")
    for theme in ("light", "dark"):
        page.evaluate(f"document.documentElement.dataset.theme = '{theme}'")
        box.shots(page, f"dashboard-{theme}")
    page.close()


def test_chat_streams_and_stops(box: Box) -> None:
    page = box.page()
    page.goto(box.gw.url + "/#/playground")
    page.wait_for_selector("#chat-form select option", state="attached")
    page.fill("#chat-prompt", "Tell me a long story")
    page.click("#chat-send")
    _until(page, "document.querySelector('#chat-log .assistant')?.textContent.length > 0", "streamed text")
    assert page.get_attribute("#chat-log .assistant", "data-state") == "streaming"
    page.click("#chat-stop")
    page.wait_for_selector("#chat-log .assistant[data-state=stopped]")
    box.shots(page, "playground")
    page.close()


def test_an_image_is_generated_and_rendered(box: Box) -> None:
    page = box.page()
    page.goto(box.gw.url + "/#/playground")
    page.wait_for_selector("#image-form select option", state="attached")
    page.select_option("#image-model", "sd-turbo")
    page.fill("#image-form textarea", "a red bicycle")
    page.fill("#image-form input[name=size]", "64x64")
    page.click("#image-form button[type=submit]")
    _until(page, "(() => { const i = document.querySelector('#image-out img');"
           " return !!i && i.complete && i.naturalWidth > 0; })()", "the image rendered")
    page.close()


def test_speech_gives_a_playable_audio_element(box: Box) -> None:
    page = box.page()
    page.goto(box.gw.url + "/#/playground")
    page.wait_for_selector("#speech-voice option[value=nova]", state="attached")
    page.select_option("#speech-voice", "nova")
    page.fill("#speech-form textarea", "Hello from the appliance.")
    page.click("#speech-form button[type=submit]")
    page.wait_for_selector("#speech-audio")
    _until(page, "document.querySelector('#speech-audio').readyState >= 1"
           " && document.querySelector('#speech-audio').duration > 0", "playable audio")
    page.close()


def test_a_pull_from_the_hub_reaches_100_percent(box: Box) -> None:
    page = box.page()
    page.goto(box.gw.url + "/#/models")
    page.click("[data-pull-button=tiny]")
    try:
        page.wait_for_selector("progress[data-pull=tiny][value='100']")
    except Exception:
        raise AssertionError(page.inner_text("tr[data-catalog=tiny]") + page.inner_text("#page")) from None
    page.wait_for_selector("[data-pull-state=tiny]:has-text('done 100%')")
    box.shots(page, "models")
    page.close()


def _tier(page: Any, model: str, tier: str) -> None:
    page.wait_for_selector(f"#models tr[data-model={model}][data-tier={tier}]")


def test_release_and_load_move_a_model_between_tiers_and_the_swap_shows(box: Box) -> None:
    models = box.page()
    models.goto(box.gw.url + "/#/models")
    models.click("tr[data-model=qwen-test] [data-action=load]")
    dash = box.page()
    _tier(dash, "qwen-test", "vram")
    models.click("tr[data-model=qwen-test] [data-action=release]")
    _tier(dash, "qwen-test", "host")
    models.click("tr[data-model=qwen-test] [data-action=load]")
    _tier(dash, "qwen-test", "vram")
    dash.wait_for_selector("#timeline .seg")
    dash.wait_for_selector("#swaps [data-swap-seconds]")
    seconds = dash.get_attribute("#swaps [data-swap-seconds]", "data-swap-seconds")
    assert seconds is not None and float(seconds) >= 0
    models.close()
    dash.close()


def test_a_revoked_key_is_refused(box: Box) -> None:
    page = box.page()
    page.goto(box.gw.url + "/#/keys")
    page.fill("#key-form input[name=name]", "browser-made")
    page.click("#key-form button[type=submit]")
    secret = page.inner_text("#new-key-secret").strip()
    assert box.gw.request("GET", "/v1/models", key=secret).status == 200
    box.shots(page, "keys")
    page.click("[data-revoke=browser-made]")
    page.wait_for_selector("tr:has-text('browser-made'):has-text('revoked')")
    assert box.gw.request("GET", "/v1/models", key=secret).status == 401
    page.close()


def test_a_user_key_sees_no_admin_control_and_the_server_refuses_them(box: Box) -> None:
    page = box.page(key="user")
    page.wait_for_selector("#engines [data-engine-state=vllm]")
    for name in ("models", "engines", "keys", "usage"):
        assert not page.is_visible(f"#nav a[data-page={name}]")
    assert page.query_selector("#timeline") is None
    page.goto(box.gw.url + "/#/keys")
    page.wait_for_selector("#page[data-page=dashboard] h1")
    status = page.evaluate("fetch('/api/keys', {headers: {Authorization: 'Bearer ' + "
                           "sessionStorage.getItem('appliance.key')}}).then(r => r.status)")
    assert status == 403
    page.close()


def test_the_engines_and_usage_pages_render(box: Box) -> None:
    page = box.page()
    page.goto(box.gw.url + "/#/engines")
    page.wait_for_selector("[data-engine-action='vllm:restart']")
    _until(page, "document.querySelector('#engine-logs').value.length > 0", "engine logs")
    box.shots(page, "engines")
    page.goto(box.gw.url + "/#/usage")
    page.wait_for_selector("#usage-summary")
    box.shots(page, "usage")
    page.close()


def test_the_api_page_lists_the_v1_routes_offline(box: Box) -> None:
    page = box.page()
    page.goto(box.gw.url + "/#/api")
    page.wait_for_selector("[data-route='POST /v1/chat/completions']")
    assert page.query_selector("[data-route='GET /v1/models']") is not None
    box.shots(page, "api")
    page.goto(box.gw.url + "/api/docs")
    page.wait_for_selector(".swagger-ui [data-path='/v1/chat/completions']")
    box.shots(page, "swagger")
    page.close()
