"""The async jobs API on a real daemon with stand-in engines: image, speech and whole chat jobs,
idempotency, cancel, retries after an engine crash, and bad input refused with nothing written."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import comfyui_engine, free_port

from appliance.store import open_store

from .conftest import Gateway, full_config, launch, wait_until

SPEECH = {"route": "/v1/audio/speech", "model": "voice", "input": "hello from a job", "voice": "alloy",
          "response_format": "wav"}
IMAGE = {"route": "/v1/images/generations", "model": "sd-turbo", "prompt": "a red cube", "size": "64x64",
         "response_format": "url"}
CHAT = {"route": "/v1/chat/completions", "model": "qwen-test", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path) -> Iterator[Gateway]:
    doc = full_config()
    doc["engines"]["crashing"] = comfyui_engine(free_port(), env={"COMFYUI_STANDIN_CRASH_AFTER": "1"})
    doc["engines"]["off"] = {**comfyui_engine(free_port()), "enabled": False}
    doc["models"]["sd-crash"] = {"engine": "crashing", "modality": "image", "vram_gb": 2.0,
                                 "workflow": "checkpoint", "checkpoint": "model.safetensors"}
    doc["models"]["sd-off"] = {"engine": "off", "modality": "image", "vram_gb": 2.0}
    doc["jobs"] = {"max_attempts": 2}
    gw = launch(module_tmp, doc, keys={"user": False, "other": False, "admin": True})
    try:
        yield gw
    finally:
        gw.stop()


def finished(gw: Gateway, job_id: str, key: str = "user", deadline_s: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        view: dict[str, Any] = gw.request("GET", f"/v1/jobs/{job_id}", key=key).json()
        return view if view["status"] in ("succeeded", "failed", "cancelled") else None
    result: dict[str, Any] = wait_until(done, deadline_s, f"job {job_id} to finish")
    return result


def job_rows(gw: Gateway) -> int:
    store = open_store("", gw.state)
    try:
        return sum(len(rows) for table, _, rows in store.dump() if table == "jobs")
    finally:
        store.close()


def test_speech_job_answers_at_once_and_keeps_its_audio(gateway: Gateway) -> None:
    resp = gateway.request("POST", "/v1/jobs", SPEECH)
    assert resp.status == 202, resp.body
    job = resp.json()
    assert job["id"].startswith("job_") and job["status"] in ("queued", "running") and job["model"] == "voice"
    done = finished(gateway, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    result = done["result"]
    assert result["content_type"] == "audio/wav" and result["url"].endswith(f"/v1/jobs/{job['id']}/content")
    audio = gateway.request("GET", f"/v1/jobs/{job['id']}/content")
    assert audio.status == 200 and audio.body[:4] == b"RIFF" and len(audio.body) == result["bytes"]
    records = [r for r in gateway.usage()["recent"] if r["model"] == "voice" and r["status"] == 200]
    assert records and records[-1]["audio_s"] > 0  # metered like a synchronous request


def test_image_job_result_has_freshly_signed_urls(gateway: Gateway) -> None:
    job = gateway.request("POST", "/v1/jobs", IMAGE).json()
    done = finished(gateway, job["id"])
    assert done["status"] == "succeeded", done
    url = done["result"]["data"][0]["url"]
    with urllib.request.urlopen(url, timeout=30) as img:  # no API key: the signature is the check
        assert img.status == 200 and img.read()[:4] == b"\x89PNG"
    again = gateway.request("GET", f"/v1/jobs/{job['id']}").json()["result"]["data"][0]["url"]
    assert again.split("?")[0] == url.split("?")[0]


def test_chat_job_is_answered_whole(gateway: Gateway) -> None:
    job = gateway.request("POST", "/v1/jobs", CHAT).json()
    done = finished(gateway, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["object"] == "chat.completion" and done["result"]["choices"][0]["message"]["content"]


def test_idempotency_key_gives_one_job_per_key_and_refuses_another_body(gateway: Gateway) -> None:
    headers = {"Idempotency-Key": f"idem-{time.time_ns()}"}
    first = gateway.request("POST", "/v1/jobs", CHAT, headers=headers)
    second = gateway.request("POST", "/v1/jobs", CHAT, headers=headers)
    assert first.status == 202 and second.status == 200
    assert second.json()["id"] == first.json()["id"] and second.headers.get("idempotent-replayed") == "true"
    other_key = gateway.request("POST", "/v1/jobs", CHAT, headers=headers, key="other")
    assert other_key.status == 202 and other_key.json()["id"] != first.json()["id"]
    changed = gateway.request("POST", "/v1/jobs", {**CHAT, "max_tokens": 5}, headers=headers)
    assert changed.status == 409 and changed.json()["error"]["code"] == "idempotency_key_reused"
    assert finished(gateway, first.json()["id"])["status"] == "succeeded"


def test_cancel_and_visibility(gateway: Gateway) -> None:
    job = gateway.request("POST", "/v1/jobs", {**IMAGE, "prompt": "to be cancelled"}).json()
    assert gateway.request("GET", f"/v1/jobs/{job['id']}", key="other").status == 404  # not theirs
    assert gateway.request("GET", f"/v1/jobs/{job['id']}", key="admin").status == 200
    cancelled = gateway.request("DELETE", f"/v1/jobs/{job['id']}")
    assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled"
    assert gateway.request("DELETE", f"/v1/jobs/{job['id']}").status == 409
    assert finished(gateway, job["id"])["status"] == "cancelled"
    assert wait_until(gateway.idle, 30, "the cancelled job's lease to be released")


def test_an_engine_that_crashes_is_retried_then_the_job_fails_with_the_error(gateway: Gateway) -> None:
    job = gateway.request("POST", "/v1/jobs", {**IMAGE, "model": "sd-crash"}).json()
    done = finished(gateway, job["id"], deadline_s=120)
    assert done["status"] == "failed" and done["attempts"] == 2, done
    assert done["error"] and done["error"].startswith("5"), done


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    ({"model": "voice", "input": "x"}, 400, "route"),
    ({"route": "/v1/embeddings", "model": "minilm", "input": "x"}, 400, "route"),
    ({"route": "/v1/audio/speech", "model": "nope", "input": "x", "voice": "alloy"}, 404, "model"),
    ({"route": "/v1/audio/speech", "model": "voice"}, 400, "input"),
    ({**CHAT, "stream": True}, 400, "stream"),
    ({"route": "/v1/chat/completions", "model": "voice", "messages": []}, 400, "model"),
    ({**IMAGE, "model": "sd-off"}, 422, "model"),
])
def test_bad_job_bodies_are_refused_and_nothing_is_written(gateway: Gateway, body: Any, status: int,
                                                           param: str | None) -> None:
    before = job_rows(gateway)
    raw = body if isinstance(body, bytes) else None
    resp = gateway.request("POST", "/v1/jobs", None if raw else body, raw=raw)
    assert resp.status == status, resp.body
    error = resp.json()["error"]
    assert error["message"] and error.get("param") == param
    assert job_rows(gateway) == before


def test_unknown_job_ids_and_methods(gateway: Gateway) -> None:
    assert gateway.request("GET", "/v1/jobs/job_doesnotexist").json()["error"]["code"] == "job_not_found"
    assert gateway.request("DELETE", "/v1/jobs/job_doesnotexist").status == 404
    assert gateway.request("GET", "/v1/jobs").status == 405
    assert gateway.request("POST", "/v1/jobs", SPEECH, key=None).status == 401
