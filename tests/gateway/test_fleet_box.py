"""The box endpoints a fleet router relies on, against a running daemon with two vLLM stand-ins that
never fit the 24 GiB fake GPU together: /health/live, /health/ready, /health/model/{id}, the
residency summary at /v1/residency, `X-Route-Policy: resident-only` (refused before anything is
evicted), `X-Route-Retry-Status`, `X-Model`, and a drain that loses no request in flight."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.errors import InvalidRequest
from appliance.gateway.routing import RoutePolicy, apply_model_header, parse_policy

from .conftest import Gateway, Http, free_port, launch, vllm_engine, wait_until

GIB = 1 << 30


def two_engines(**vllm_env: str) -> dict[str, Any]:
    env = {"VLLM_STANDIN_FOOTPRINT_BYTES": str(14 * GIB), **vllm_env}
    return {
        "server": {"load_deadline_s": 60.0},
        "scheduler": {"max_wait_s": 1.0},
        "engines": {"a": vllm_engine(free_port(), sleep_mode=True, env=env),
                    "b": vllm_engine(free_port(), sleep_mode=True, env=env)},
        "models": {"alpha": {"engine": "a", "modality": "text", "vram_gb": 14.0, "max_tokens_cap": 16},
                   "beta": {"engine": "b", "modality": "text", "vram_gb": 14.0, "max_tokens_cap": 16}},
    }


def chat(model: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    if model is not None:
        body["model"] = model
    return body


def error(resp: Http) -> dict[str, Any]:
    err: dict[str, Any] = resp.json()["error"]
    return err


def test_routing_headers_parse_strictly() -> None:
    assert parse_policy(None, None) is None
    assert parse_policy(b"resident-only", None) == RoutePolicy(409)
    assert parse_policy(b" Resident-Only ", b"503") == RoutePolicy(503)
    for policy, status, param in ((b"any", None, "X-Route-Policy"), (b"resident-only", b"500", "X-Route-Retry-Status"),
                                  (None, b"soon", "X-Route-Retry-Status")):
        with pytest.raises(InvalidRequest) as err:
            parse_policy(policy, status)
        assert err.value.param == param


def test_x_model_fills_or_must_match_the_body() -> None:
    body: dict[str, Any] = {"messages": []}
    assert apply_model_header(body, b"alpha") is True and body["model"] == "alpha"  # the body is written again
    same = {"model": "alpha"}
    assert apply_model_header(same, b"alpha") is False
    assert apply_model_header({"model": None}, b"alpha") is True
    untouched = {"model": "beta"}
    assert apply_model_header(untouched, None) is False and untouched == {"model": "beta"}
    for bad, param in (({"model": "beta"}, "model"), ({}, "X-Model")):
        with pytest.raises(InvalidRequest) as err:
            apply_model_header(bad, b"alpha" if param == "model" else b" ")
        assert err.value.param == param


@pytest.fixture(scope="module")
def box(module_tmp: Path) -> Iterator[Gateway]:
    gw = launch(module_tmp / "box", two_engines(), keys={"user": False, "admin": True})
    try:
        yield gw
    finally:
        gw.stop()


def summary(gw: Gateway) -> dict[str, Any]:
    resp = gw.request("GET", "/v1/residency")
    assert resp.status == 200, resp.body
    result: dict[str, Any] = resp.json()
    return result


def test_health_endpoints_are_open_and_say_what_is_resident(box: Gateway) -> None:
    assert box.request("GET", "/health/live", key=None).status == 200
    ready = box.request("GET", "/health/ready", key=None)
    assert ready.status == 200 and ready.json()["status"] == "ready"
    cold = box.request("GET", "/health/model/alpha", key=None)
    assert cold.status == 503 and cold.json()["resident"] is False and cold.json()["tier"] == "disk"
    assert box.request("GET", "/health/model/alpha?loadable=1", key=None).status == 200
    unknown = box.request("GET", "/health/model/nope", key=None)
    assert unknown.status == 404 and error(unknown)["code"] == "model_not_found"


def test_residency_summary_needs_a_key_and_follows_a_load(box: Gateway) -> None:
    assert box.request("GET", "/v1/residency", key=None).status == 401
    before = summary(box)
    assert before["state"] == "ready" and before["total_vram_bytes"] == 24 * GIB
    assert set(before["models"]) == {"alpha", "beta"}
    assert before["models"]["alpha"]["engine"] == "a" and before["models"]["alpha"]["loadable"] is True
    assert box.request("POST", "/v1/chat/completions", chat("alpha")).status == 200
    after = summary(box)
    assert after["models"]["alpha"]["tier"] == "vram" and after["models"]["alpha"]["resident"] is True
    assert after["generation"] > before["generation"]
    assert after["free_vram_bytes"] < before["free_vram_bytes"]
    assert box.request("GET", "/health/model/alpha", key=None).status == 200


def test_resident_only_is_refused_before_any_eviction(box: Gateway) -> None:
    assert box.request("POST", "/v1/chat/completions", chat("alpha")).status == 200
    before = summary(box)
    policy = {"X-Route-Policy": "resident-only"}
    refused = box.request("POST", "/v1/chat/completions", chat("beta"), headers=policy)
    assert refused.status == 409, refused.body
    assert error(refused)["code"] == "model_not_resident" and int(refused.headers["retry-after"]) >= 1
    as_503 = box.request("POST", "/v1/chat/completions", chat("beta"),
                         headers={**policy, "X-Route-Retry-Status": "503"})
    assert as_503.status == 503 and error(as_503)["code"] == "model_not_resident" and "retry-after" in as_503.headers
    after = summary(box)
    assert after["generation"] == before["generation"]  # nothing was loaded or evicted for them
    assert after["models"]["alpha"]["tier"] == "vram" and after["models"]["beta"]["tier"] == "disk"
    assert box.request("POST", "/v1/chat/completions", chat("alpha"), headers=policy).status == 200
    assert box.idle()


@pytest.mark.parametrize(("header", "value"), [("X-Route-Policy", "evict-freely"),
                                               ("X-Route-Retry-Status", "502")])
def test_unknown_routing_header_values_are_400_naming_the_header(box: Gateway, header: str, value: str) -> None:
    resp = box.request("POST", "/v1/chat/completions", chat("alpha"), headers={header: value})
    assert resp.status == 400 and error(resp)["param"] == header


def test_x_model_names_the_model_and_must_match_the_body(box: Gateway) -> None:
    mismatch = box.request("POST", "/v1/chat/completions", chat("beta"), headers={"X-Model": "alpha"})
    assert mismatch.status == 400 and error(mismatch)["param"] == "model"
    ok = box.request("POST", "/v1/chat/completions", chat(None), headers={"X-Model": "alpha"})
    assert ok.status == 200, ok.body
    assert ok.json()["choices"][0]["message"]["content"]
    same = box.request("POST", "/v1/chat/completions", chat("alpha"), headers={"X-Model": "alpha"})
    assert same.status == 200


def test_drain_refuses_new_work_and_loses_nothing_in_flight(tmp_path: Path) -> None:
    gw = launch(tmp_path, two_engines(VLLM_STANDIN_TTFT_S="3"), keys={"user": False, "admin": True})
    try:
        assert gw.request("POST", "/v1/chat/completions", chat("alpha")).status == 200  # loaded: slow answers now
        results: dict[str, Http] = {}
        streamed: list[str] = []

        def plain() -> None:
            results["plain"] = gw.request("POST", "/v1/chat/completions", chat("alpha"))

        def stream() -> None:
            client = gw.client("user")
            for part in client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}],
                                                       max_tokens=4, stream=True):
                streamed.extend(c.delta.content or "" for c in part.choices)
            streamed.append("[end]")

        submitted = gw.request("POST", "/v1/jobs", {"route": "/v1/chat/completions", **chat("alpha")})
        assert submitted.status == 202, submitted.body
        threads = [threading.Thread(target=plain), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        busy = {"requests": 2, "jobs": 1}
        wait_until(lambda: gw.request("GET", "/api/drain", key="admin").json()["in_flight"] == busy, 20,
                   "both requests and the job in flight")
        assert gw.request("POST", "/api/drain", key="user").status == 403
        started = gw.request("POST", "/api/drain", key="admin")
        assert started.status == 200 and started.json()["state"] == "draining"
        assert started.json()["drained"] is False
        assert gw.request("GET", "/health/ready", key=None).status == 503
        refused = gw.request("POST", "/v1/chat/completions", chat("alpha"))
        assert refused.status == 503 and "draining" in error(refused)["message"] and "retry-after" in refused.headers
        job = gw.request("POST", "/v1/jobs", {"route": "/v1/chat/completions", **chat("alpha")})
        assert job.status == 503
        assert summary(gw)["state"] == "draining"  # the router can still read it
        for t in threads:
            t.join(60)
        assert results["plain"].status == 200 and results["plain"].json()["choices"][0]["message"]["content"]
        assert streamed[-1] == "[end]" and "".join(streamed[:-1])
        job_id = submitted.json()["id"]
        wait_until(lambda: gw.request("GET", f"/v1/jobs/{job_id}").json()["status"] == "succeeded", 30,
                   "the job that was running to finish")
        progress = gw.request("GET", "/api/drain", key="admin").json()
        assert progress["drained"] is True and progress["in_flight"] == {"requests": 0, "jobs": 0}
        again = gw.request("POST", "/api/drain", key="admin")  # idempotent
        assert again.status == 200 and again.json()["drained"] is True
    finally:
        gw.stop()
    assert gw.proc.returncode == 0  # SIGTERM after the drain: a clean stop
