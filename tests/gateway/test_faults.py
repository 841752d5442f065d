"""Engines that crash, load slowly, never become ready, or lose their client halfway: every stream
ends (an error event, never a hang), leases are given back, and the next request is served."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from .conftest import Gateway, comfyui_engine, free_port, launch, wait_until
from .conftest import vllm_engine as _vllm

DEADLINE_S = 3.0


def vllm(env: dict[str, str], **extra: Any) -> dict[str, Any]:
    return _vllm(free_port(), gpu_memory_utilization=0.05, sleep_mode=False, env=env,
                 restart={"backoff_initial_s": 0.2, "max_failures": 5}, **extra)


@pytest.fixture(scope="module")
def gateway(module_tmp: Path) -> Iterator[Gateway]:
    doc = {
        "server": {"keepalive_interval_s": 0.2, "load_deadline_s": DEADLINE_S},
        "engines": {
            "crashy": vllm({"VLLM_STANDIN_CRASH_AFTER": "2", "VLLM_STANDIN_TOKENS_PER_S": "40"}),
            "slow-a": vllm({"VLLM_STANDIN_START_DELAY_S": "1.0"}),
            "slow-b": vllm({"VLLM_STANDIN_START_DELAY_S": "1.0"}),
            "late": vllm({"VLLM_STANDIN_START_DELAY_S": "120"}, ready_timeout_s=300.0),
            "paced": vllm({"VLLM_STANDIN_TOKENS_PER_S": "10"}),
            "comfy-slow": comfyui_engine(free_port(), env={"COMFYUI_STANDIN_IMAGE_S": "30"}),
        },
        "models": {
            "crashy": {"engine": "crashy", "modality": "text", "vram_gb": 1.5},
            "slow-a": {"engine": "slow-a", "modality": "text", "vram_gb": 1.5},
            "slow-b": {"engine": "slow-b", "modality": "text", "vram_gb": 1.5},
            "late": {"engine": "late", "modality": "text", "vram_gb": 1.5, "queue_limit": 1},
            "paced": {"engine": "paced", "modality": "text", "vram_gb": 1.5},
            "huge": {"engine": "paced", "modality": "text", "vram_gb": 200.0},
            "slow-image": {"engine": "comfy-slow", "modality": "image", "vram_gb": 1.0, "workflow": "checkpoint"},
        },
    }
    gw = launch(module_tmp, doc, keys={"user": False, "admin": True})
    try:
        yield gw
    finally:
        gw.stop()


def chat(model: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "w1 w2 w3 w4"}], "max_tokens": max_tokens,
            "stream": stream}


def raw_stream(gw: Gateway, body: dict[str, Any], timeout: float = 30) -> tuple[int, list[bytes]]:
    """(status, SSE blocks) of a streaming request, comments included."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {gw.keys['user']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, [b for b in data.split(b"\n\n") if b]


def test_crash_mid_stream_ends_the_stream_with_an_error_event_and_the_next_request_is_served(
        gateway: Gateway) -> None:
    # A 1 s read timeout: the error event must arrive within a second of the crash, never a hang.
    client = gateway.client(timeout=openai.Timeout(30.0, read=1.0))  # the client's own type (httpx2 in openai 3)
    first = client.chat.completions.create(**chat("crashy", 20, True))
    assert len([c for c in first if c.choices and c.choices[0].delta.content]) == 20
    received = []
    with pytest.raises(openai.APIError) as err:  # the stand-in exits halfway through this one
        for chunk in client.chat.completions.create(**chat("crashy", 20, True)):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert not isinstance(err.value, openai.APITimeoutError)
    assert "crashy" in err.value.message and "failed during the stream" in err.value.message
    assert 0 < len(received) < 20
    # The engine restarts; the next request waits for it instead of failing.
    again = gateway.client().chat.completions.create(**chat("crashy", 3, False))
    assert again.choices[0].message.content == "w1 w2 w3"
    assert gateway.engine("crashy")["restarts"] >= 1
    record = next(r for r in gateway.usage()["recent"] if r["model"] == "crashy" and r["error"])
    assert record["error"] == "engine_failed"


def test_streaming_client_gets_keepalive_comments_while_the_model_loads(gateway: Gateway) -> None:
    status, blocks = raw_stream(gateway, chat("slow-a", 3, True))
    assert status == 200
    # Issue 18: the comment says where the model is, the place in line and about how long it takes
    # (a cold start here: the profile's estimate until this box measured one)
    assert re.fullmatch(rb": waiting for model slow-a to load: disk, position 1, about \d+ s", blocks[0]), blocks[0]
    data = [b for b in blocks if b.startswith(b"data: ")]
    assert data[-1] == b"data: [DONE]" and len(data) == 1 + 3 + 1  # role, 3 tokens, [DONE]


def test_models_list_says_each_models_tier_queue_and_expected_load_time(gateway: Gateway) -> None:
    cards = {m["id"]: m for m in gateway.request("GET", "/v1/models").json()["data"]}
    card = cards["slow-b"]
    assert card["tier"] in ("disk", "absent", "host", "vram") and card["queued"] >= 0
    assert card["expected_load_s"] >= 0 and (card["tier"] == "vram") == (card["expected_load_s"] == 0)


def test_non_streaming_client_simply_waits_for_the_model(gateway: Gateway) -> None:
    out = gateway.client().chat.completions.create(**chat("slow-b", 2, False))
    assert out.choices[0].message.content == "w1 w2"
    assert next(r for r in gateway.usage()["recent"] if r["model"] == "slow-b")["wait_s"] > 0.5


def test_model_not_ready_by_the_deadline_is_503_with_retry_after(gateway: Gateway) -> None:
    resp = gateway.request("POST", "/v1/chat/completions", chat("late", 2, False))
    assert resp.status == 503
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.json()["error"]["code"] == "model_unavailable"
    # A streaming client already has its 200 and keep-alive comments: it gets an error event, then [DONE].
    status, blocks = raw_stream(gateway, chat("late", 2, True))
    assert status == 200 and blocks[0].startswith(b": waiting for model late")
    error = json.loads(blocks[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "model_unavailable" and blocks[-1] == b"data: [DONE]"


def test_full_queue_is_429_with_retry_after(gateway: Gateway) -> None:
    results: list[int] = []
    waiter = threading.Thread(
        target=lambda: results.append(gateway.request("POST", "/v1/chat/completions", chat("late", 1, False)).status))
    waiter.start()
    try:
        wait_until(lambda: gateway.status()["residency"]["models"]["late"]["queued"] == 1, 10, "a queued request")
        resp = gateway.request("POST", "/v1/chat/completions", chat("late", 1, False))
        assert resp.status == 429
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json()["error"]["code"] == "queue_full"
    finally:
        waiter.join(30)
    assert results == [503]


def test_model_that_cannot_fit_is_503(gateway: Gateway) -> None:
    resp = gateway.request("POST", "/v1/chat/completions", chat("huge", 1, False))
    assert resp.status == 503 and "retry-after" in resp.headers
    assert resp.json()["error"]["code"] in ("cannot_fit", "model_unavailable")


def engine_metric(gw: Gateway, engine: str, name: str) -> float:
    port = gw.engine(engine)["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def aborted(gw: Gateway) -> float:
    port = gw.engine("paced")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(r'vllm:request_success_total\{[^}]*finished_reason="abort"[^}]*\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def released(gw: Gateway) -> bool:
    model = gw.status()["residency"]["models"]["paced"]
    return bool(model["in_flight"] == 0 and model["queued"] == 0)


def test_client_disconnect_mid_stream_cancels_upstream_and_releases_the_lease(gateway: Gateway) -> None:
    gateway.client().chat.completions.create(**chat("paced", 1, False))  # engine up
    before = aborted(gateway)
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    body = json.dumps(chat("paced", 100, True)).encode()  # ten seconds of tokens
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {gateway.keys['user']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                 + body)
    got = b""
    while got.count(b"data: ") < 3:  # the role chunk and two tokens
        got += sock.recv(65536)
    assert gateway.status()["residency"]["models"]["paced"]["in_flight"] == 1
    sock.close()
    wait_until(lambda: released(gateway), 10, "the lease to be released")
    wait_until(lambda: aborted(gateway) > before, 10, "the engine to abort the request")
    assert engine_metric(gateway, "paced", "vllm:num_requests_running") == 0
    record = next(r for r in reversed(gateway.usage()["recent"]) if r["model"] == "paced")
    assert record["error"] == "client_disconnected"


def upstream_connections(gw: Gateway, engine: str) -> int:
    """Established connections from the daemon to an engine's port (its pooled client)."""
    port = gw.engine(engine)["port"]
    conns = psutil.Process(gw.proc.pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_client_disconnect_while_waiting_for_a_non_streaming_answer(gateway: Gateway) -> None:
    gateway.client().chat.completions.create(**chat("paced", 1, False))
    idle = upstream_connections(gateway, "paced")
    with pytest.raises(openai.APITimeoutError):
        gateway.client(timeout=0.5).chat.completions.create(**chat("paced", 100, False))  # 10 s of tokens
    wait_until(lambda: released(gateway), 10, "the lease to be released")
    # The upstream request is dropped: its connection is closed, not handed back to the pool. (The
    # stand-in, unlike vLLM, does not abort a non-streaming request when its client goes away.)
    wait_until(lambda: upstream_connections(gateway, "paced") < idle, 10, "the upstream connection to close")
    record = next(r for r in reversed(gateway.usage()["recent"]) if r["model"] == "paced")
    assert record["error"] == "client_disconnected"


def test_client_leaving_the_queue_frees_its_place(gateway: Gateway) -> None:
    with pytest.raises(openai.APITimeoutError):  # "late" never becomes ready while this test runs
        gateway.client(timeout=0.5).chat.completions.create(**chat("late", 1, False))
    wait_until(lambda: gateway.status()["residency"]["models"]["late"]["queued"] == 0, 10, "the queue to empty")


def comfy_busy(gw: Gateway) -> bool:
    port = gw.engine("comfy-slow")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/queue", timeout=5) as resp:
        queue = json.loads(resp.read())
    return bool(queue["queue_running"] or queue["queue_pending"])


def test_client_leaving_an_image_job_interrupts_comfyui(gateway: Gateway) -> None:
    with pytest.raises(openai.APITimeoutError):  # a 30-second image
        gateway.client(timeout=2.0).images.generate(model="slow-image", prompt="slow", size="64x64")
    wait_until(lambda: not comfy_busy(gateway), 10, "ComfyUI to drop the prompt")
    port = gateway.engine("comfy-slow")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/history", timeout=5) as resp:
        history = json.loads(resp.read())
    events = [m[0] for entry in history.values() for m in entry["status"]["messages"]]
    assert "execution_interrupted" in events  # it was running, and was stopped rather than finished
    wait_until(lambda: gateway.status()["residency"]["models"]["slow-image"]["in_flight"] == 0, 10,
               "the lease to be released")
