"""Stream preemption end to end: a real `appliance serve` with `scheduler.preemption = true`, a 20 GiB
vLLM stand-in and a 15 GiB ComfyUI stand-in on a 24 GiB fake GPU (they never fit together). Chats and
completions, streamed and not.

A chat stream is running when an image request arrives; once the image has waited its max_wait the
scheduler aborts the stream, sleeps vLLM, serves the image, wakes vLLM and resumes the stream with
`continue_final_message`. The client (the official openai library) must see one uninterrupted
stream: the same text as an unpreempted run, one id, one opening role chunk, the right usage. A
stream the gateway cannot stitch is drained instead. The order of events is the scheduler's, not a
race: without preemption the image could only start after the stream ends.
"""

from __future__ import annotations

import re
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import free_port, vllm_engine
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Gateway, launch, wait_until
from .preemption_box import GIB, collect, image_box, stream_beside_image

PROMPT = "one two three four five six seven"
TOKENS = 120  # 6 s at 20 tokens/s: far longer than the image's max_wait


@pytest.fixture(scope="module")
def gw(module_tmp: Path) -> Iterator[Gateway]:
    vllm = vllm_engine(free_port(), sleep_mode=True,
                       env={"VLLM_STANDIN_FOOTPRINT_BYTES": str(20 * GIB), "VLLM_STANDIN_TOKENS_PER_S": "20"})
    chat = {"engine": "vllm", "modality": "text", "vram_gb": 20, "max_wait_s": 30.0, "max_tokens_cap": 512}
    g = launch(module_tmp, image_box(module_tmp, {"vllm": vllm}, {"chat": chat}, max_wait_s=1.0, image_s=1.0))
    try:
        yield g
    finally:
        g.stop()


def generated_tokens(gw: Gateway) -> int:
    """The vLLM stand-in's `vllm:generation_tokens_total`, which moves while a request runs."""
    port = tomllib.loads((gw.tmp / "config.toml").read_text())["engines"]["vllm"]["port"]
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)$", body, re.MULTILINE)
    assert found, body
    return int(float(found.group(1)))


def once_generating(gw: Gateway, streaming: threading.Event, what: str, tokens: int = 10) -> threading.Thread:
    """A thread that sets `streaming` once a whole (unstreamed) request has generated `tokens` tokens:
    no chunk reaches its client, so it watches the engine's token counter instead."""
    before = generated_tokens(gw)

    def watch() -> None:
        wait_until(lambda: generated_tokens(gw) >= before + tokens, 20, f"{tokens} tokens of {what}")
        streaming.set()

    return threading.Thread(target=watch)


def run_both(gw: Gateway, **extra: Any) -> tuple[list[Any], dict[str, float]]:
    """A chat stream of TOKENS tokens with an image asked for once it has sent 10 chunks."""

    def stream_chat(streaming: threading.Event) -> list[Any]:
        return collect(gw.client(None).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": PROMPT}], max_tokens=TOKENS, stream=True,
            stream_options={"include_usage": True}, **extra), streaming, 10)

    return stream_beside_image(gw, stream_chat)


def test_a_preempted_stream_resumes_as_one_uninterrupted_stream(gw: Gateway) -> None:
    whole = gw.client(None).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": PROMPT}], max_tokens=TOKENS)
    expected = whole.choices[0].message.content
    chunks, marks = run_both(gw)

    # The image was served while the stream was paused: preempted, not drained.
    assert marks["image_done"] < marks["stream_done"]
    log = gw.log()
    assert "residency: preempt chat stream" in log
    preempted = gw.status()["residency"]["models"]["chat"]["preemptions"]
    assert preempted >= 1
    assert log.count("residency: wake chat") >= 1
    scraped = gw.request("GET", "/metrics", key=None)
    counters = {(f.name, s.labels.get("model")): s.value
                for f in text_string_to_metric_families(scraped.body.decode()) for s in f.samples}
    assert counters[("appliance_preemptions", "chat")] == preempted
    assert counters[("appliance_resumes", "chat")] == preempted  # every preempted stream came back

    # One stream: one id, one opening role chunk, the same text as without preemption, one finish.
    assert len({c.id for c in chunks}) == 1
    content = [c for c in chunks if c.choices]
    assert [c.choices[0].delta.role for c in content].count("assistant") == 1
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == expected
    finishes = [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(PROMPT.split()), TOKENS)
    record = [r for r in gw.usage()["recent"] if r["model"] == "chat"][-1]
    assert (record["tokens_in"], record["tokens_out"], record["status"]) == (len(PROMPT.split()), TOKENS, 200)


def test_a_preempted_whole_answer_comes_back_as_one_response(gw: Gateway) -> None:
    """A non-streamed chat is preemptible too: the gateway streams it from vLLM, resumes it after
    the image, and answers with the one chat.completion an uninterrupted run gives."""
    expected = gw.client(None).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": PROMPT}], max_tokens=TOKENS)
    before = gw.log().count("residency: preempt chat stream")

    def whole_chat(streaming: threading.Event) -> Any:
        watcher = once_generating(gw, streaming, "the chat")
        watcher.start()
        try:
            return gw.client(None).chat.completions.create(
                model="chat", messages=[{"role": "user", "content": PROMPT}], max_tokens=TOKENS)
        finally:
            watcher.join(30)

    answer, marks = stream_beside_image(gw, whole_chat)
    assert marks["image_done"] < marks["stream_done"]  # paused for the image, not drained
    assert gw.log().count("residency: preempt chat stream") > before
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.content == expected.choices[0].message.content
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(PROMPT.split()), TOKENS)
    assert answer.usage.total_tokens == len(PROMPT.split()) + TOKENS
    record = [r for r in gw.usage()["recent"] if r["model"] == "chat"][-1]
    assert (record["tokens_in"], record["tokens_out"], record["status"]) == (len(PROMPT.split()), TOKENS, 200)


def test_a_stream_that_cannot_be_stitched_is_drained(gw: Gateway) -> None:
    before = gw.log().count("residency: preempt chat stream")
    chunks, marks = run_both(gw, response_format={"type": "json_object"})
    assert marks["stream_done"] < marks["image_done"]  # the image waited for the whole stream
    assert gw.log().count("residency: preempt chat stream") == before
    content = [c for c in chunks if c.choices]
    assert sum(1 for c in content if c.choices[0].delta.content) == TOKENS


def test_a_client_that_leaves_while_preempted_is_forgotten(gw: Gateway) -> None:
    preempts = gw.log().count("residency: preempt chat stream")
    body = {"model": "chat", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": TOKENS, "stream": True}

    def leave_while_preempted(streaming: threading.Event) -> int:
        with httpx.Client(timeout=30) as http, http.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept open: leaving a for loop over it would close the response
            for _ in range(20):
                next(lines)
            streaming.set()
            wait_until(lambda: gw.log().count("residency: preempt chat stream") > preempts, 20, "the preemption")
            return gw.log().count("residency: wake chat")
        # the client hung up while its stream waited for the image

    wakes, marks = stream_beside_image(gw, leave_while_preempted)
    assert "image_done" in marks
    wait_until(gw.idle, 10, "nothing queued or in flight")
    assert gw.log().count("residency: wake chat") == wakes  # nobody is left to resume: no wake for it
    again = gw.client(None).chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=3)
    assert again.choices[0].message.content == "hi hi hi"


COMPLETION_PROMPT = "the sky is the colour of the sea"  # repeated words: the continuation must read its context


def test_a_preempted_completion_stream_resumes_with_its_text_appended_to_the_prompt(gw: Gateway) -> None:
    """/v1/completions streams are preempted too: the continuation's prompt is the prompt plus the
    text already sent, and the client sees one stream with an unpreempted run's text."""
    expected = gw.client(None).completions.create(model="chat", prompt=COMPLETION_PROMPT, max_tokens=TOKENS)
    before = gw.log().count("residency: preempt chat stream")

    def stream_completion(streaming: threading.Event) -> list[Any]:
        return collect(gw.client(None).completions.create(
            model="chat", prompt=COMPLETION_PROMPT, max_tokens=TOKENS, stream=True,
            stream_options={"include_usage": True}), streaming, 10)

    chunks, marks = stream_beside_image(gw, stream_completion)
    assert marks["image_done"] < marks["stream_done"]  # paused for the image, not drained
    assert gw.log().count("residency: preempt chat stream") > before
    assert len({c.id for c in chunks}) == 1 and {c.object for c in chunks} == {"text_completion"}
    content = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in content) == expected.choices[0].text
    assert [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason] == ["length"]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(COMPLETION_PROMPT.split()), TOKENS)


def test_a_preempted_whole_completion_comes_back_as_one_text_completion(gw: Gateway) -> None:
    expected = gw.client(None).completions.create(model="chat", prompt=COMPLETION_PROMPT, max_tokens=TOKENS)
    before = gw.log().count("residency: preempt chat stream")

    def whole_completion(streaming: threading.Event) -> Any:
        watcher = once_generating(gw, streaming, "the completion")
        watcher.start()
        try:
            return gw.client(None).completions.create(model="chat", prompt=COMPLETION_PROMPT, max_tokens=TOKENS)
        finally:
            watcher.join(30)

    answer, marks = stream_beside_image(gw, whole_completion)
    assert marks["image_done"] < marks["stream_done"]
    assert gw.log().count("residency: preempt chat stream") > before
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert answer.choices[0].text == expected.choices[0].text
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(COMPLETION_PROMPT.split()), TOKENS)
    record = [r for r in gw.usage()["recent"] if r["model"] == "chat"][-1]
    assert (record["tokens_in"], record["tokens_out"], record["status"]) == (len(COMPLETION_PROMPT.split()), TOKENS,
                                                                             200)


def test_a_completion_with_echo_is_drained(gw: Gateway) -> None:
    before = gw.log().count("residency: preempt chat stream")

    def echo_stream(streaming: threading.Event) -> str:
        text = []
        for i, chunk in enumerate(gw.client(None).completions.create(
                model="chat", prompt=COMPLETION_PROMPT, max_tokens=TOKENS, stream=True, echo=True)):
            text.append(chunk.choices[0].text if chunk.choices else "")
            if i == 10:
                streaming.set()
        return "".join(text)

    text, marks = stream_beside_image(gw, echo_stream)
    assert marks["stream_done"] < marks["image_done"]  # echo cannot be stitched: the image waited
    assert gw.log().count("residency: preempt chat stream") == before
    assert text.startswith(COMPLETION_PROMPT)
