"""The drain deadline end to end: a real `appliance serve` without stream preemption, a 20 GiB vLLM
stand-in and a 15 GiB ComfyUI stand-in on a 24 GiB fake GPU (they never fit together).

A runaway chat stream (2,000 tokens at 20 tokens/s: 100 s) holds vLLM when an image is asked for.
The image's max_wait (0.5 s) starts the switch and vLLM drains; once the image has waited its
max_wait plus `scheduler.drain_deadline_s` (1 s), the stream cannot be resumed (preemption is off),
so vLLM is stopped: the stream ends early, the image is served, and the next chat starts vLLM again.
Before the deadline existed the image waited for the whole answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from daemon_harness import free_port, vllm_engine

from .conftest import Gateway, launch
from .preemption_box import GIB, image_box, stream_beside_image

TOKENS = 2000  # 100 s at 20 tokens/s: far past the image's max_wait plus the drain deadline


@pytest.fixture(scope="module")
def gw(module_tmp: Path) -> Iterator[Gateway]:
    vllm = vllm_engine(free_port(), sleep_mode=True,
                       env={"VLLM_STANDIN_FOOTPRINT_BYTES": str(20 * GIB), "VLLM_STANDIN_TOKENS_PER_S": "20"})
    chat = {"engine": "vllm", "modality": "text", "vram_gb": 20, "max_wait_s": 30.0}
    doc = image_box(module_tmp, {"vllm": vllm}, {"chat": chat}, max_wait_s=0.5, image_s=0.5)
    doc["scheduler"] = {"preemption": False, "max_wait_s": 0.5, "drain_deadline_s": 1.0}
    g = launch(module_tmp, doc)
    try:
        yield g
    finally:
        g.stop()


def test_a_runaway_stream_past_the_drain_deadline_stops_its_engine_and_the_image_is_served(gw: Gateway) -> None:
    def stream_chat(streaming: threading.Event) -> tuple[int, str | None, str]:
        """Content chunks received, the last finish_reason, and how the stream ended."""
        chunks, finish, ended = 0, None, "done"
        body = {"model": "chat", "messages": [{"role": "user", "content": "tell me everything"}],
                "max_tokens": TOKENS, "stream": True}
        try:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60.0) as resp:
                assert resp.status_code == 200, resp.read()
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[len("data: "):])
                    if "error" in data:
                        ended = "error event"
                        continue
                    choice = data["choices"][0]
                    if choice["delta"].get("content"):
                        chunks += 1
                        if chunks == 5:
                            streaming.set()
                    finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            ended = f"broken: {type(exc).__name__}"
        return chunks, finish, ended

    (chunks, finish, ended), marks = stream_beside_image(gw, stream_chat)
    assert chunks < TOKENS and finish != "length", (chunks, finish, ended)  # the answer was cut short
    assert "image_done" in marks
    log = gw.log()
    assert "scheduler.drain_deadline_s" in log and "stopping its engine" in log, log[-3000:]
    # The next chat starts vLLM again and is answered.
    answer = gw.client(None).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert answer.choices[0].message.content
