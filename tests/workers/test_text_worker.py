"""The text worker serving a tiny random-weight Llama through its real process and the OpenAI SDK."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from worker_harness import ServedProcess, start_worker, wait_until

FAKE_BYTES = 3 * 1024**3


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fake-gpu-text")


@pytest.fixture(scope="module")
def text_worker(tiny_llama_dir: Path, log_dir: Path, fake_dir: Path) -> Iterator[ServedProcess]:
    worker = start_worker(
        "text", "tiny-llama", tiny_llama_dir, log_dir, "--offload-strategy", "arena",
        env={"APPLIANCE_FAKE_GPU_DIR": str(fake_dir), "APPLIANCE_FAKE_GPU_BYTES": str(FAKE_BYTES)},
    )  # fmt: skip
    yield worker
    worker.stop()


@pytest.fixture
def client(text_worker: ServedProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=text_worker.base_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def _fake_usage(fake_dir: Path, pid: int) -> int:
    return int(json.loads((fake_dir / f"{pid}.json").read_text())["used_bytes"])


def test_chat_streams_real_tokens_matching_the_whole_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "hello world, how are you today?"}]
    stream = client.chat.completions.create(
        model="tiny-llama", messages=messages, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert len(deltas) >= 3, deltas  # several incremental pieces, not one blob
    assert len(set(deltas)) >= 2, deltas  # varied tokens from the random weights
    whole = client.chat.completions.create(
        model="tiny-llama",
        messages=messages,
        max_tokens=16,
        temperature=0,
    )
    assert "".join(deltas) == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert usage.prompt_tokens == whole.usage.prompt_tokens > 5  # type: ignore[union-attr]
    assert usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    if whole.choices[0].finish_reason == "length":
        assert usage.completion_tokens == 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_continuous_usage_stats_count_every_token_generated_so_far(text_worker: ServedProcess) -> None:
    body = {"model": "tiny-llama", "messages": HI, "max_tokens": 12, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with httpx.stream("POST", text_worker.base_url + "/v1/chat/completions", json=body, timeout=60) as resp:
        chunks = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts[0] == 0 and counts == sorted(counts)  # the role chunk, then the count so far
    assert chunks[-1]["choices"] == [] and counts[-1] == counts[-2] == 12  # ignore_eos: max_tokens
    assert {c["usage"]["prompt_tokens"] for c in chunks} == {chunks[-1]["usage"]["prompt_tokens"]}


def test_raw_stream_ends_with_done(text_worker: ServedProcess) -> None:
    body = {"model": "tiny-llama", "prompt": "the quick brown", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", text_worker.base_url + "/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(p["object"] == "text_completion" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completion_stops_before_a_stop_string(client: openai.OpenAI) -> None:
    free = client.completions.create(model="tiny-llama", prompt="a small", max_tokens=24, temperature=0)
    text = free.choices[0].text
    assert len(text) >= 6, text
    stop = text[3:6]
    cut = client.completions.create(model="tiny-llama", prompt="a small", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.usage is not None and free.usage is not None
    assert cut.usage.completion_tokens <= free.usage.completion_tokens


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "tiny-llama"}, 400, "messages"),
        ({"model": "tiny-llama", "messages": "hi"}, 400, "messages"),
        ({"model": "tiny-llama", "messages": HI, "temperature": 5}, 400, "temperature"),
        ({"model": "tiny-llama", "messages": HI, "n": 2}, 400, "n"),
        ({"model": "tiny-llama", "messages": HI, "max_tokens": 100000}, 400, "max_tokens"),
        ({"model": "other", "messages": HI}, 404, "model"),
        ({"model": "tiny-llama", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0]"),
        ({"model": "tiny-llama", "messages": HI, "continue_final_message": True}, 400, "continue_final_message"),
        ({"model": "tiny-llama", "messages": [*HI, {"role": "assistant", "content": "he"}],
          "continue_final_message": True, "add_generation_prompt": True}, 400, "continue_final_message"),
        ({"model": "tiny-llama", "messages": HI, "add_generation_prompt": "no"}, 400, "add_generation_prompt"),
    ],
)
def test_bad_requests_name_the_field(
    text_worker: ServedProcess, body: dict[str, object], status: int, param: str
) -> None:
    resp = httpx.post(text_worker.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    # the gateway's envelope: a string code or null, never the HTTP status as an integer
    assert error["code"] == ("model_not_found" if status == 404 else None)


WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [WEATHER_TOOL]}, "tools"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"logit_bias": {"5": 10}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
    ],
)
def test_tools_and_json_mode_were_ignored_with_a_200_now_refused(
    text_worker: ServedProcess, extra: dict[str, object], param: str
) -> None:
    for route, base in (("/v1/chat/completions", {"messages": HI}), ("/v1/completions", {"prompt": "hi"})):
        resp = httpx.post(text_worker.base_url + route, json={**base, "max_tokens": 2, **extra}, timeout=60)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert (error["param"], error["code"]) == (param, "unsupported_parameter")
        assert error["type"] == "invalid_request_error"


def test_neutral_values_of_unhonoured_fields_still_pass(text_worker: ServedProcess) -> None:
    body = {"messages": HI, "max_tokens": 2, "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
            "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}}  # fmt: skip
    resp = httpx.post(text_worker.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text


def test_a_huge_message_was_tokenized_before_the_400_now_refused_by_its_length(text_worker: ServedProcess) -> None:
    from appliance.fields import CHARS_PER_TOKEN_BOUND

    huge = "word " * (512 * CHARS_PER_TOKEN_BOUND // 5 + 1)  # the tiny model's context is 512 tokens
    resp = httpx.post(text_worker.base_url + "/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": huge}]}, timeout=60)  # fmt: skip
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "context_length_exceeded")
    assert "characters" in error["message"]  # the length bound answered, not the tokenizer
    prompt = httpx.post(text_worker.base_url + "/v1/completions", json={"prompt": huge}, timeout=60)
    assert prompt.status_code == 400 and prompt.json()["error"]["param"] == "prompt"
    assert "characters" in prompt.json()["error"]["message"]
    long = httpx.post(text_worker.base_url + "/v1/completions", json={"prompt": "word " * 600}, timeout=60)
    assert long.status_code == 400 and "tokens" in long.json()["error"]["message"]  # under the bound: tokenized


def test_chat_continues_its_final_assistant_message(client: openai.OpenAI, tiny_llama_dir: Path) -> None:
    """vLLM's `continue_final_message` (how the gateway resumes a preempted stream): the template leaves
    the final assistant message open, and the model goes on from its last character, exactly as a
    plain completion of that rendered text does."""
    from transformers import AutoTokenizer

    whole = client.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=12, temperature=0)
    text = whole.choices[0].message.content or ""
    assert len(text) >= 4, text
    partial = text[: len(text) // 2]
    messages = [*HI, {"role": "assistant", "content": partial}]
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    go_on = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=6, temperature=0,
                                           extra_body=extra)  # type: ignore[arg-type]
    rendered = AutoTokenizer.from_pretrained(tiny_llama_dir).apply_chat_template(
        messages, continue_final_message=True, add_generation_prompt=False, tokenize=False
    )
    assert rendered.endswith(partial) and not rendered.endswith("<|im_end|>\n")
    plain = client.completions.create(model="tiny-llama", prompt=rendered, max_tokens=6, temperature=0)
    assert go_on.choices[0].message.content == plain.choices[0].text
    assert go_on.usage is not None and plain.usage is not None
    assert go_on.usage.prompt_tokens == plain.usage.prompt_tokens


def test_models_lists_the_served_id(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]


def test_offload_then_wake_gives_identical_sampled_output(
    client: openai.OpenAI, text_worker: ServedProcess, fake_dir: Path
) -> None:
    def sample() -> str:
        out = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "the lazy dog"}],
            max_tokens=12, temperature=0.9, seed=1234,
        )  # fmt: skip
        return out.choices[0].message.content or ""

    base = text_worker.base_url
    before = sample()
    pid = text_worker.proc.pid
    assert _fake_usage(fake_dir, pid) == FAKE_BYTES
    off = httpx.post(base + "/offload", timeout=60).json()
    assert off["state"] == "offloaded" and off["seconds"] >= 0
    assert httpx.get(base + "/health").json() == {"status": "ok", "state": "offloaded"}
    assert _fake_usage(fake_dir, pid) == 0
    stats = httpx.get(base + "/stats").json()
    assert stats["state"] == "offloaded" and stats["device"] == "cpu" and stats["host_bytes"] > 0
    woke = httpx.post(base + "/load", timeout=60).json()
    assert woke["state"] == "loaded"
    assert sample() == before
    stats = httpx.get(base + "/stats").json()
    assert stats["wake_seconds"] is not None and stats["load_seconds"] is not None
    assert stats["offload_seconds"] is not None and stats["requests_served"] >= 2
    assert _fake_usage(fake_dir, pid) == FAKE_BYTES


def test_request_while_unloaded_loads_first(client: openai.OpenAI, text_worker: ServedProcess) -> None:
    assert httpx.post(text_worker.base_url + "/unload", timeout=60).json()["state"] == "unloaded"
    assert httpx.get(text_worker.base_url + "/stats").json()["host_bytes"] == 0
    out = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=3, temperature=0)
    assert out.usage is not None and out.usage.completion_tokens >= 1
    assert httpx.get(text_worker.base_url + "/health").json()["state"] == "loaded"
    assert httpx.post(text_worker.base_url + "/load", timeout=60).json() == {"state": "loaded", "seconds": 0.0}


def test_preload_and_fake_gpu_file_removed_on_sigterm(tiny_llama_dir: Path, log_dir: Path, tmp_path: Path) -> None:
    fake = tmp_path / "gpu"
    worker = start_worker(
        "text", "tiny-llama", tiny_llama_dir, log_dir, "--preload",
        env={"APPLIANCE_FAKE_GPU_DIR": str(fake), "APPLIANCE_FAKE_GPU_BYTES": "1000"},
    )  # fmt: skip
    try:
        report = fake / f"{worker.proc.pid}.json"
        wait_until(lambda: httpx.get(worker.base_url + "/health").json()["state"] == "loaded", 60, "preload")
        assert json.loads(report.read_text()) == {"pid": worker.proc.pid, "used_bytes": 1000, "name": "text"}
        os.kill(worker.proc.pid, signal.SIGTERM)
        assert worker.proc.wait(timeout=30) == 0
        assert not report.exists()
    finally:
        worker.stop()


def test_a_failed_load_is_reported_and_leaves_the_worker_unloaded(log_dir: Path, tmp_path: Path) -> None:
    worker = start_worker("text", "missing", tmp_path / "no-such-model", log_dir)
    try:
        resp = httpx.post(worker.base_url + "/load", timeout=60)
        assert resp.status_code == 500 and "load failed" in resp.json()["error"]["message"]
        assert httpx.get(worker.base_url + "/health").json()["state"] == "unloaded"
        stats = httpx.get(worker.base_url + "/stats").json()
        assert stats["last_error"] and stats["load_seconds"] is None
        chat = httpx.post(worker.base_url + "/v1/completions", json={"prompt": "hi"}, timeout=60)
        assert chat.status_code == 503 and "could not be loaded" in chat.json()["error"]["message"]
        assert httpx.get(worker.base_url + "/nowhere").json()["error"]["code"] == "not_found"
    finally:
        worker.stop()


def test_a_client_that_leaves_mid_stream_cancels_its_generation(text_worker: ServedProcess) -> None:
    body = {"prompt": "the quick", "max_tokens": 400, "ignore_eos": True, "temperature": 0, "stream": True}
    with httpx.stream("POST", text_worker.base_url + "/v1/completions", json=body, timeout=60) as resp:
        first = next(line for line in resp.iter_lines() if line.startswith("data: {"))
        assert json.loads(first.removeprefix("data: "))["object"] == "text_completion"
    # the connection is closed after the first chunk; the worker notices and frees the request
    wait_until(lambda: httpx.get(text_worker.base_url + "/stats").json()["in_flight"] == 0, 30, "the stream to end")
    out = httpx.post(text_worker.base_url + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=60)
    assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] >= 1
