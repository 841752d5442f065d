"""Abandoned requests through the daemon (issue 13, items 3 and 4).

A client that hangs up mid-request must not leave its engine working: the gateway closes the engine
connection, has the engine cancel the work (the own workers' `/cancel`, ComfyUI's `/queue` delete and
`/interrupt`), and gives the model's lease back only once the engine has stopped, so the next request
runs alone. And an engine that goes silent ends its request after the engine's `idle_timeout_s`: 502
for a whole answer, an SSE error event and `[DONE]` for a stream, with the lease given back.
Everything is counted on the engines' observed state (steps in the worker's /stats, steps in the
ComfyUI stand-in's step log, ComfyUI's /queue), never on wall-clock time.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tiny_models

from .conftest import Gateway, comfyui_engine, free_port, launch, vllm_engine, wait_until, worker_engine

KEYS = {"user": False, "admin": True}


def hang_up_later(gw: Gateway, path: str, body: dict[str, Any]) -> socket.socket:
    """POST through the gateway on a raw connection whose answer is never read; close it to hang up."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {gw.keys['user']}\r\nContent-Length: {len(data)}\r\n\r\n")
    sock.sendall(head.encode() + data)
    return sock


def in_flight(gw: Gateway, model: str) -> int:
    return int(gw.status()["residency"]["models"][model]["in_flight"])


# -- the diffusers worker -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers(module_tmp: Path, tiny_sd3_dir: Path) -> Iterator[tuple[Gateway, str]]:
    engine = worker_engine("diffusers", str(tiny_sd3_dir), device="auto", extra_args=["--default-size", "32x32"])
    doc = {"engines": {"diffusers": engine},
           "models": {"tiny-sd3": {"engine": "diffusers", "modality": "image", "vram_gb": 0.1}}}
    gw = launch(module_tmp / "diffusers", doc, keys=KEYS)
    try:
        yield gw, f"http://127.0.0.1:{engine['port']}"
    finally:
        gw.stop()


def test_abandoned_image_job_is_stopped_before_its_lease_is_given_back(diffusers: tuple[Gateway, str]) -> None:
    gw, worker = diffusers

    def stats() -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(worker + "/stats", timeout=10).json()
        return result

    first = gw.client().images.generate(model="tiny-sd3", prompt="warm up", size="64x64",
                                        extra_body={"steps": 1})  # fmt: skip
    assert len(first.data) == 1
    before = stats()["steps"]
    sock = hang_up_later(gw, "/v1/images/generations",
                         {"model": "tiny-sd3", "prompt": "a slow fox", "size": "64x64", "steps": 200})  # fmt: skip
    try:
        wait_until(lambda: stats()["steps"] - before >= 2, 60, "the abandoned job's first steps")
    finally:
        sock.close()
    wait_until(lambda: in_flight(gw, "tiny-sd3") == 0, 60, "the lease given back")
    after = stats()  # read once the lease is back: the engine must already be idle
    assert not after["busy"] and after["in_flight"] == 0, after
    ghost = after["last_cancelled"]
    assert ghost is not None and ghost["steps_after_cancel"] <= 1 and ghost["steps"] < 200, ghost
    # The next image runs alone: the engine executes exactly its three steps meanwhile.
    start = after["steps"]
    out = gw.client().images.generate(model="tiny-sd3", prompt="a quick fox", size="64x64", extra_body={"steps": 3})
    assert len(out.data) == 1
    assert stats()["steps"] - start == 3


# -- the text and speech workers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_and_speech(module_tmp: Path) -> Iterator[tuple[Gateway, str, str]]:
    llama = tiny_models.build_tiny_llama(module_tmp / "long-llama", max_positions=40_000)
    text = worker_engine("text", str(llama), device="auto")
    speech = worker_engine("speech", "piper:en_US-joe-medium", device="auto")
    doc = {"engines": {"text": text, "speech": speech},
           "models": {"tiny-llama": {"engine": "text", "modality": "text", "vram_gb": 0.1, "max_tokens_cap": 30_000},
                      "joe": {"engine": "speech", "modality": "speech", "vram_gb": 0.1}}}  # fmt: skip
    gw = launch(module_tmp / "text-speech", doc, keys=KEYS)
    try:
        yield gw, f"http://127.0.0.1:{text['port']}", f"http://127.0.0.1:{speech['port']}"
    finally:
        gw.stop()


@pytest.mark.parametrize("kind", ["chat stream", "speech"])
def test_abandoned_text_or_speech_is_stopped_before_its_lease_is_given_back(
        text_and_speech: tuple[Gateway, str, str], kind: str) -> None:
    gw, text_worker, speech_worker = text_and_speech
    if kind == "speech":
        worker, model, path = speech_worker, "joe", "/v1/audio/speech"
        body: dict[str, Any] = {"model": model, "voice": "alloy", "response_format": "wav",
                                "input": " ".join(f"Sentence number {i} is spoken slowly." for i in range(60))}
    else:
        worker, model, path = text_worker, "tiny-llama", "/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": "tell me a story"}], "stream": True,
                "max_tokens": 30_000, "ignore_eos": True}

    def stats() -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(worker + "/stats", timeout=10).json()
        return result

    gw.request("POST", path, {**body, "input": "Warm up."} if kind == "speech" else
               {**body, "stream": False, "max_tokens": 2}, timeout=120)  # fmt: skip
    before = stats()["steps"]
    sock = hang_up_later(gw, path, body)
    try:
        wait_until(lambda: stats()["steps"] - before >= 2, 60, "the abandoned request's first units of work")
    finally:
        sock.close()
    wait_until(lambda: in_flight(gw, model) == 0, 60, "the lease given back")
    after = stats()
    assert not after["busy"] and after["in_flight"] == 0, after
    ghost = after["last_cancelled"]
    assert ghost is not None and ghost["steps_after_cancel"] <= 1, ghost


# -- ComfyUI ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comfy(module_tmp: Path) -> Iterator[tuple[Gateway, str, Path]]:
    steps = module_tmp / "comfy-steps.log"
    port = free_port()
    env = {"COMFYUI_STANDIN_IMAGE_S": "4", "COMFYUI_STANDIN_STEP_LOG": str(steps)}  # 20 steps of 0.2 s
    doc = {"engines": {"comfyui": comfyui_engine(port, env=env)},
           "models": {"sd": {"engine": "comfyui", "modality": "image", "vram_gb": 10.0, "workflow": "checkpoint",
                             "checkpoint": "model.safetensors"}}}  # fmt: skip
    gw = launch(module_tmp / "comfy", doc, keys=KEYS)
    try:
        yield gw, f"http://127.0.0.1:{port}", steps
    finally:
        gw.stop()


def test_abandoned_comfyui_prompt_is_interrupted_before_its_lease_is_given_back(
        comfy: tuple[Gateway, str, Path]) -> None:
    gw, base, step_log = comfy

    def lines() -> list[tuple[str, int]]:
        text = step_log.read_text() if step_log.exists() else ""
        return [(p, int(s)) for p, s in (line.split() for line in text.splitlines())]

    sock = hang_up_later(gw, "/v1/images/generations", {"model": "sd", "prompt": "a slow lighthouse", "size": "64x64"})
    try:
        wait_until(lambda: len(lines()) >= 2, 60, "the abandoned prompt's first steps")
    finally:
        sock.close()
    ghost = lines()[0][0]
    wait_until(lambda: in_flight(gw, "sd") == 0, 60, "the lease given back")
    queue = httpx.get(base + "/queue", timeout=10).json()  # once the lease is back, ComfyUI is idle
    assert queue == {"queue_running": [], "queue_pending": []}, queue
    ghost_steps = [s for p, s in lines() if p == ghost]
    assert ghost_steps and max(ghost_steps) < 20, ghost_steps  # interrupted, not run to its end
    out = gw.client().images.generate(model="sd", prompt="a quick lighthouse", size="64x64")
    assert len(out.data) == 1
    after = lines()
    first_new = next(i for i, (p, _) in enumerate(after) if p != ghost)
    assert all(p != ghost for p, _ in after[first_new:])  # no ghost step ran beside the next prompt
    assert [s for _, s in after[first_new:]] == list(range(1, 21))  # the next prompt ran its own 20 steps


def test_comfyui_prompt_past_image_timeout_is_interrupted_before_the_502(module_tmp: Path) -> None:
    port = free_port()
    doc = {"server": {"image_timeout_s": 1.0},
           "engines": {"comfyui": comfyui_engine(port, env={"COMFYUI_STANDIN_IMAGE_S": "600"})},
           "models": {"sd": {"engine": "comfyui", "modality": "image", "vram_gb": 10.0, "workflow": "checkpoint",
                             "checkpoint": "model.safetensors"}}}  # fmt: skip
    gw = launch(module_tmp / "comfy-timeout", doc, keys=KEYS)
    try:
        resp = gw.request("POST", "/v1/images/generations", {"model": "sd", "prompt": "never done", "size": "64x64"},
                          timeout=120)  # fmt: skip
        assert resp.status == 502 and "within 1 s" in resp.json()["error"]["message"], resp.body
        # The 502 came after ComfyUI let go of the prompt: nothing runs or waits there any more.
        queue = httpx.get(f"http://127.0.0.1:{port}/queue", timeout=10).json()
        assert queue == {"queue_running": [], "queue_pending": []}, queue
        wait_until(lambda: in_flight(gw, "sd") == 0, 30, "the lease given back")
    finally:
        gw.stop()


# -- idle timeout ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def silent(module_tmp: Path) -> Iterator[Gateway]:
    """A vLLM stand-in that sends a chat stream's role chunk and then nothing for a minute."""
    engine = vllm_engine(free_port(), gpu_memory_utilization=0.3, idle_timeout_s=1.0,
                         env={"VLLM_STANDIN_TTFT_S": "60"})  # fmt: skip
    doc = {"engines": {"vllm": engine},
           "models": {"qwen-test": {"engine": "vllm", "modality": "text", "vram_gb": 7.5, "max_tokens_cap": 64}}}
    gw = launch(module_tmp / "silent", doc, keys=KEYS)
    try:
        yield gw
    finally:
        gw.stop()


def test_silent_engine_ends_a_whole_answer_with_502(silent: Gateway) -> None:
    body = {"model": "qwen-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    resp = silent.request("POST", "/v1/chat/completions", body, timeout=120)
    assert resp.status == 502, resp.body
    error = resp.json()["error"]
    assert error["code"] == "engine_timeout" and "sent nothing for 1 s" in error["message"], error
    wait_until(lambda: in_flight(silent, "qwen-test") == 0, 30, "the lease given back")


def test_silent_engine_ends_a_stream_with_an_error_event(silent: Gateway) -> None:
    body = {"model": "qwen-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    resp = silent.request("POST", "/v1/chat/completions", body, timeout=120)
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream"), resp.body
    events = [e for e in resp.body.decode().split("\n\n") if e.startswith("data: ")]
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"  # the engine's role chunk
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "engine_timeout", error
    assert events[-1] == "data: [DONE]"
    wait_until(lambda: in_flight(silent, "qwen-test") == 0, 30, "the lease given back")
