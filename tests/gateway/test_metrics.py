"""`GET /metrics` after real traffic through the stand-ins and a worker, parsed with prometheus-client's
own text parser: every family present with its type and labels, values matching what happened, label
values bounded whatever clients send, request ids in headers and JSON log lines, no secret in any log.

One daemon serves the module (vLLM and ComfyUI stand-ins that cannot share the 24 GiB fake GPU, so
chat and image requests swap; the espeak speech worker on the CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import comfyui_engine, free_port, vllm_engine
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from appliance.cli import fresh_lines
from appliance.metrics import FAMILIES

from .conftest import ROOT, Gateway, launch, wait_until, worker_engine

GIB = 1 << 30
PRICE = 3.6  # USD per hour: a GPU-second costs a thousandth of a dollar
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("metrics")
    doc: dict[str, Any] = {
        "server": {"keepalive_interval_s": 0.2, "load_deadline_s": 60.0},
        "gpu": {"probe": "fake", "fake_dir": str(tmp / "fakegpu"), "declared_total_gb": 24, "reserve_gb": 1.5,
                "host_ram_budget_gb": 64, "sample_interval_s": 0.2},
        "scheduler": {"max_wait_s": 2.0},
        "metrics": {"hourly_price_usd": PRICE},
        "engines": {
            "vllm": vllm_engine(free_port(), env={"VLLM_STANDIN_FOOTPRINT_BYTES": str(20 * GIB)}),
            "comfyui": comfyui_engine(free_port(), env={"COMFYUI_STANDIN_FOOTPRINT_BYTES": str(15 * GIB),
                                                        "COMFYUI_STANDIN_IMAGE_S": "0.05"}),
            "tts": worker_engine("speech", "espeak:en-us"),
        },
        "models": {
            "chat": {"engine": "vllm", "modality": "text", "vram_gb": 20, "max_tokens_cap": 32},
            "img": {"engine": "comfyui", "modality": "image", "vram_gb": 15, "workflow": "sd35_turbo",
                    "checkpoint": "sd3.5_large_turbo.safetensors"},
            "voice": {"engine": "tts", "modality": "speech", "vram_gb": 0.1},
        },
    }
    gateway = launch(tmp, doc, keys={"user": False, "admin": True})
    try:
        yield gateway
    finally:
        gateway.stop()


def scrape(gw: Gateway) -> dict[str, Any]:
    resp = gw.request("GET", "/metrics")
    assert resp.status == 200, resp.body
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(resp.body.decode())}


def samples(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> list[Sample]:
    return [s for s in families[name].samples
            if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    found = samples(families, name, suffix, **labels)
    assert len(found) == 1, (name, suffix, labels, families[name].samples)
    return float(found[0].value)


@pytest.fixture(scope="module")
def traffic(gw: Gateway) -> dict[str, Any]:
    """Chat (streamed), image, chat, speech, each after the one before: four swaps of the two engines."""
    client = gw.client()
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}],
                                            stream=True, max_tokens=8)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    image = client.images.generate(model="img", prompt="a red bicycle", n=1, response_format="b64_json")
    whole = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "again"}],
                                           max_tokens=8)
    speech = client.audio.speech.create(model="voice", voice="alloy", input="hello there", response_format="wav")
    return {"streamed": streamed, "image": image, "whole": whole, "speech": speech.content}


def test_every_family_is_exported_with_its_type_and_labels(gw: Gateway, traffic: dict[str, Any]) -> None:
    families = scrape(gw)
    for name, (kind, labels) in FAMILIES.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, (name, families[name].type)
        for s in families[name].samples:
            got = set(s.labels) - ({"le"} if s.name.endswith("_bucket") else set())
            assert got == set(labels), (s.name, s.labels)
    # base units in the names (the text format has no unit field): seconds, bytes, ratio, ...
    for name in FAMILIES:
        assert name.startswith("appliance_")
        assert not name.endswith("_total"), "the parser strips _total from counter families"
    assert not [n for n in families if n.startswith("appliance_") and n not in FAMILIES], "undeclared family"


def test_values_match_the_traffic(gw: Gateway, traffic: dict[str, Any]) -> None:
    assert traffic["streamed"] and traffic["whole"].choices[0].message.content
    families = scrape(gw)
    swaps = {(s.labels["model"], s.labels["kind"]): s.value for s in samples(families, "appliance_swaps", "_total")}
    # chat starts, sleeps for the image, the image starts, sleeps for chat, chat wakes
    assert swaps == {("chat", "cold_start"): 1, ("chat", "sleep"): 1, ("img", "cold_start"): 1,
                     ("img", "sleep"): 1, ("chat", "wake"): 1}, swaps
    log = gw.log()  # the residency manager logs each swap it executes
    assert log.count("residency: sleep chat") == 1 and log.count("residency: wake chat") == 1
    assert value(families, "appliance_swaps", "_total", model="chat", kind="sleep") == 1
    assert samples(families, "appliance_swaps", "_total", model="chat", kind="sleep")[0].labels["direction"] == "out"
    assert samples(families, "appliance_swaps", "_total", model="chat", kind="wake")[0].labels["direction"] == "in"
    assert value(families, "appliance_swap_duration_seconds", "_count", model="img", kind="cold_start") == 1
    assert value(families, "appliance_swap_duration_seconds", "_sum", model="img", kind="cold_start") > 0
    assert value(families, "appliance_swap_stall_seconds", "_total") > 0  # cold starts with nothing running
    assert value(families, "appliance_swaps_in_progress") == 0
    # two chats, one image, one speech request, each 200
    assert value(families, "appliance_request_duration_seconds", "_count", route=CHAT, model="chat",
                 status="200") == 2
    assert value(families, "appliance_request_duration_seconds", "_count", route="/v1/images/generations",
                 model="img", status="200") == 1
    waited = value(families, "appliance_request_residency_wait_seconds", "_sum", route=CHAT, model="chat",
                   status="200")
    engine = value(families, "appliance_request_engine_seconds", "_sum", route=CHAT, model="chat", status="200")
    whole = value(families, "appliance_request_duration_seconds", "_sum", route=CHAT, model="chat", status="200")
    assert waited > 0 and engine > 0 and waited + engine <= whole
    assert value(families, "appliance_time_to_first_token_seconds", "_count", route=CHAT, model="chat") == 1
    assert value(families, "appliance_tokens", "_total", model="chat", direction="out") >= 2
    assert value(families, "appliance_tokens", "_total", model="chat", direction="in") > 0
    assert value(families, "appliance_images", "_total", model="img") == 1
    assert value(families, "appliance_audio_seconds", "_total", model="voice") > 0
    gpu_s = value(families, "appliance_gpu_seconds", "_total", model="chat")
    assert gpu_s > 0
    assert value(families, "appliance_cost_usd", "_total", model="chat") == pytest.approx(gpu_s * PRICE / 3600)
    # residency and supervisor state
    assert value(families, "appliance_model_tier", model="chat", tier="vram") == 1
    assert value(families, "appliance_model_tier", model="img", tier="host") == 1
    assert value(families, "appliance_model_vram_bytes", model="img") == 0
    assert value(families, "appliance_model_footprint_bytes", model="chat") > 0
    assert value(families, "appliance_model_max_wait_seconds", model="chat") == 2.0
    assert value(families, "appliance_model_queue_depth", model="chat") == 0
    assert value(families, "appliance_model_oldest_wait_seconds", model="chat") == 0
    assert value(families, "appliance_engine_up", engine="vllm") == 1
    assert value(families, "appliance_engine_state", engine="vllm", state="ready") == 1
    assert value(families, "appliance_engine_state", engine="vllm", state="fatal") == 0
    assert value(families, "appliance_engine_restarts", "_total", engine="vllm") == 0
    assert value(families, "appliance_engine_gpu_memory_bytes", engine="vllm") > 10 * GIB
    assert value(families, "appliance_gpu_memory_total_bytes") == 24 * GIB
    assert value(families, "appliance_gpu_memory_used_bytes") > 0
    assert value(families, "appliance_state_disk_total_bytes") > 0
    assert value(families, "appliance_preemptions", "_total", model="chat") == 0  # preemption is off
    assert value(families, "appliance_resumes", "_total", model="chat") == 0
    assert samples(families, "appliance_build_info")[0].labels["version"]


def test_label_values_are_bounded_whatever_clients_send(gw: Gateway, traffic: dict[str, Any]) -> None:
    before = scrape(gw)
    for i in range(40):
        resp = gw.request("POST", CHAT, {"model": f"bad-name-{i}", "messages": [{"role": "user", "content": "x"}]})
        assert resp.status == 404
        resp = gw.request("GET", f"/v1/nothing-{i}")
        assert resp.status == 404
        resp = gw.request("POST", f"/v1/models/bad-name-{i}", {})
    families = scrape(gw)
    text = gw.request("GET", "/metrics").body.decode()
    assert "bad-name" not in text and "nothing-" not in text
    series = {name: len(f.samples) for name, f in families.items()}
    grown = {n: series[n] - len(before[n].samples) for n in series if series[n] != len(before[n].samples)}
    # the 120 bad requests land in a handful of series (model "other", route "other"), not 120
    hist = len(samples(families, "appliance_request_duration_seconds", "_count"))
    assert hist - len(samples(before, "appliance_request_duration_seconds", "_count")) <= 3, grown
    assert value(families, "appliance_request_duration_seconds", "_count", route=CHAT, model="other",
                 status="404") == 40


def test_metrics_need_a_key_and_engine_metrics_are_relayed(gw: Gateway, traffic: dict[str, Any]) -> None:
    assert gw.request("GET", "/metrics", key=None).status == 401
    assert gw.request("GET", "/metrics", key="sk-app-00000000-nope").status == 401
    assert gw.request("GET", "/metrics", key="admin").status == 200
    vllm = gw.request("GET", "/metrics/engines/vllm")
    assert vllm.status == 200, vllm.body
    assert b"vllm:" in vllm.body
    assert gw.request("GET", "/metrics/engines/vllm", key=None).status == 401
    missing = gw.request("GET", "/metrics/engines/comfyui")
    assert missing.status == 404 and "vLLM engines: vllm" in missing.json()["error"]["message"]


def test_request_ids_reach_headers_and_json_log_lines_without_secrets(gw: Gateway, traffic: dict[str, Any]) -> None:
    resp = gw.request("GET", "/v1/models", headers={"X-Request-Id": "trace-abc.123"})
    assert resp.status == 200 and resp.headers["x-request-id"] == "trace-abc.123"
    fresh = gw.request("GET", "/v1/models", headers={"X-Request-Id": "no spaces or \"quotes\" allowed"})
    assert len(fresh.headers["x-request-id"]) == 16  # a new one: the client's is not a plain token
    assert gw.request("GET", "/health", key=None).headers.get("x-request-id")
    chat = gw.request("POST", CHAT, {"model": "chat", "messages": [{"role": "user", "content": "secret prompt"}],
                                     "max_tokens": 4}, headers={"X-Request-Id": "chat-req-1"})
    assert chat.status == 200, chat.body

    def access_lines() -> list[dict[str, Any]]:
        lines = []
        for line in gw.log().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("logger") == "appliance.access":
                    lines.append(rec)
        return lines

    lines = wait_until(lambda: [r for r in access_lines() if r.get("request_id") == "chat-req-1"], 10,
                       "the chat's access log line")
    (line,) = lines
    assert line["model"] == "chat" and line["engine"] == "vllm" and line["level"] == "info"
    assert line["key_id"] and line["time"].endswith("Z")
    assert any(r.get("request_id") == "trace-abc.123" for r in access_lines())
    # every line the daemon wrote is one JSON object (stderr is not a terminal: log_format auto)
    assert all(json.loads(line) for line in gw.log().splitlines() if line.strip())
    logs = gw.log() + "".join(p.read_text(errors="replace") for p in (gw.state / "logs").glob("*.log"))
    for secret in gw.keys.values():
        assert secret not in logs
        # the secret part alone (`sk-app-<id>-<secret>`; the secret is urlsafe base64 and may hold "-" itself,
        # so split once after the id: the last "-" piece could be a single letter found anywhere)
        assert secret.removeprefix("sk-app-").split("-", 1)[1] not in logs
    assert "secret prompt" not in gw.log()


def test_logs_follow_tags_each_engine_and_prints_only_new_lines(gw: Gateway, traffic: dict[str, Any]) -> None:
    env = {**os.environ, "APPLIANCE_URL": gw.url, "APPLIANCE_API_KEY": gw.keys["admin"], "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "logs", "-f", "--tail", "3", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    assert proc.stdout is not None
    out = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(out.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: {"[vllm]", "[comfyui]", "[tts]"} <= {ln.split(" ", 1)[0] for ln in lines}, 20,
                   "a tagged tail of every engine")
        before = sum(ln.startswith("[tts]") for ln in lines)
        assert before <= 3  # --tail 3: not the whole history
        restarted = gw.request("POST", "/api/engines/tts/restart", key="admin")
        assert restarted.status == 200, restarted.body
        wait_until(lambda: sum(ln.startswith("[tts]") for ln in lines) > before, 60, "the restarted worker's lines")
        assert proc.poll() is None  # -f keeps following
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        out.close()


def test_fresh_lines_counts_from_the_lines_written() -> None:
    assert fresh_lines(["a", "b", "c"], written=10, seen=8) == ["b", "c"]
    assert fresh_lines(["a", "a", "a"], written=10, seen=9) == ["a"]  # repeated lines are not mistaken for old
    assert fresh_lines(["a", "b"], written=10, seen=10) == []
    assert fresh_lines(["x", "y"], written=50, seen=3) == ["x", "y"]  # more arrived than the tail holds


def test_open_on_loopback_serves_metrics_without_a_key(tmp_path: Path) -> None:
    doc: dict[str, Any] = {"metrics": {"open_on_loopback": True}, "engines": {}, "models": {}}
    gw = launch(tmp_path, doc, keys={"user": False})
    try:
        assert gw.request("GET", "/metrics", key=None).status == 200
        assert gw.request("GET", "/v1/models", key=None).status == 401  # only /metrics is opened
    finally:
        gw.stop()
    doc = {"metrics": {"enabled": False}, "engines": {}, "models": {}}
    gw = launch(tmp_path / "off", doc, keys={"user": False})
    try:
        assert gw.request("GET", "/metrics").status == 404
    finally:
        gw.stop()
