"""Stream preemption with the appliance's own text worker (a tiny random-weight Llama on the CPU,
declaring 10 GiB on a 24 GiB fake GPU) and a 15 GiB ComfyUI stand-in: they never fit together.

A long stream runs when an image request arrives; once the image has waited its max_wait the
scheduler aborts the stream, sleeps the worker, serves the image, wakes the worker and resumes the
stream (a chat with `continue_final_message`, a completion with the text sent appended to its
prompt). The client sees one stream: one id, one opening role chunk, one finish, and exact usage
although this engine merges tokens into chunks. (The continuation re-tokenises the text already
sent, so unlike vLLM's stand-in the random-weight model need not draw the same tokens as an
unpreempted run.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiny_models

from .conftest import OFFLINE, Gateway, launch, worker_engine
from .preemption_box import GIB, collect, image_box, stream_beside_image

TOKENS = 2000  # with ignore_eos: seconds of generation, far longer than the image's max_wait


@pytest.fixture(scope="module")
def gw(module_tmp: Path) -> Iterator[Gateway]:
    llama = tiny_models.build_tiny_llama(module_tmp / "llama", max_positions=4096)
    # device "auto" on the fake GPU: scheduled as a GPU model, generating on the CPU
    txt = worker_engine("text", str(llama), device="auto", env={**OFFLINE, "APPLIANCE_FAKE_GPU_BYTES": str(10 * GIB)})
    small = {"engine": "txt", "modality": "text", "vram_gb": 10, "max_wait_s": 30.0, "max_tokens_cap": TOKENS}
    g = launch(module_tmp, image_box(module_tmp, {"txt": txt}, {"small": small}, max_wait_s=0.2, image_s=0.5))
    try:
        yield g
    finally:
        g.stop()


def test_a_text_worker_stream_is_preempted_and_resumed_as_one_stream(gw: Gateway) -> None:
    client = gw.client(None)
    client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=2)

    def stream_chat(streaming: threading.Event) -> list[Any]:
        return collect(client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hello world"}], max_tokens=TOKENS,
            temperature=0, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True}), streaming, 5)  # fmt: skip

    chunks, marks = stream_beside_image(gw, stream_chat)

    assert marks["image_done"] < marks["stream_done"]  # served while the stream was paused
    log = gw.log()
    assert "residency: preempt small stream" in log and "residency: wake small" in log
    assert gw.status()["residency"]["models"]["small"]["preemptions"] >= 1

    assert len({c.id for c in chunks}) == 1
    content = [c for c in chunks if c.choices]
    assert [c.choices[0].delta.role for c in content].count("assistant") == 1
    assert [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason] == ["length"]
    assert sum(len(c.choices[0].delta.content or "") for c in content) > 0
    usage = chunks[-1].usage
    # Exact counts from the engine (continuous_usage_stats), though chunks merge tokens here: the
    # original prompt, and every token generated for the client (ignore_eos: exactly max_tokens).
    alone = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hello world"}],
                                           max_tokens=1)
    assert usage is not None and alone.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (alone.usage.prompt_tokens, TOKENS)
    assert sum(1 for c in content if c.choices[0].delta.content) < TOKENS  # fewer chunks than tokens


def test_a_whole_answer_from_the_text_worker_is_built_from_its_stream(gw: Gateway) -> None:
    """With preemption on, a non-streamed chat is relayed as a stream (gateway.gather): the worker's
    chunks, which merge tokens, still make one chat.completion with the worker's exact usage."""
    client = gw.client(None)
    body: dict[str, Any] = {"model": "small", "messages": [{"role": "user", "content": "hello world"}],
                            "max_tokens": 12, "temperature": 0, "extra_body": {"ignore_eos": True}}
    answer = client.chat.completions.create(**body)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, stream=True)
                       if c.choices)
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.content == streamed != ""
    assert answer.usage is not None and answer.usage.completion_tokens == 12
    assert answer.usage.prompt_tokens > 0


def test_a_text_worker_completion_stream_is_preempted_and_resumed(gw: Gateway) -> None:
    """/v1/completions on the worker: the continuation's prompt is the prompt plus the text sent."""
    client = gw.client(None)
    preempts = gw.log().count("residency: preempt small stream")

    def stream_completion(streaming: threading.Event) -> list[Any]:
        return collect(client.completions.create(
            model="small", prompt="once upon a time", max_tokens=TOKENS, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}), streaming, 5)

    chunks, marks = stream_beside_image(gw, stream_completion)
    assert marks["image_done"] < marks["stream_done"]
    assert gw.log().count("residency: preempt small stream") > preempts
    assert len({c.id for c in chunks}) == 1
    content = [c for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason] == ["length"]
    alone = client.completions.create(model="small", prompt="once upon a time", max_tokens=1)
    usage = chunks[-1].usage
    assert usage is not None and alone.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (alone.usage.prompt_tokens, TOKENS)
