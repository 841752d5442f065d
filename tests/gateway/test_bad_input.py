"""Bad input: each rejected with a 4xx and the OpenAI envelope, before any model is queued or started."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from appliance.fields import CHARS_PER_TOKEN_BOUND

from .conftest import Gateway, full_config, launch

LIMIT = 256 * 1024
HUGE = "word " * (4096 * CHARS_PER_TOKEN_BOUND // 5 + 1)  # over the vLLM stand-in's 4096-token context
CHAT = {"model": "qwen-test", "messages": [{"role": "user", "content": "hi"}]}
IMAGE = {"model": "sd-turbo", "prompt": "a cat"}
SPEECH = {"model": "voice", "input": "hello", "voice": "alloy"}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path) -> Iterator[Gateway]:
    gw = launch(module_tmp, full_config(max_body_bytes=LIMIT), keys={"user": False, "admin": True})
    try:
        yield gw
    finally:
        gw.stop()


CASES: list[tuple[str, str, Any, int, str | None]] = [
    # (route, id, body, status, param)
    ("/v1/chat/completions", "messages-not-array", {**CHAT, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", "messages-missing", {"model": "qwen-test"}, 400, "messages"),
    ("/v1/chat/completions", "message-without-role", {**CHAT, "messages": [{"content": "x"}]}, 400, "messages[0]"),
    ("/v1/chat/completions", "model-missing", {"messages": CHAT["messages"]}, 400, "model"),
    ("/v1/chat/completions", "model-not-string", {**CHAT, "model": 3}, 400, "model"),
    ("/v1/chat/completions", "max-tokens-string", {**CHAT, "max_tokens": "10"}, 400, "max_tokens"),
    ("/v1/chat/completions", "max-tokens-zero", {**CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", "stream-not-bool", {**CHAT, "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", "temperature-string", {**CHAT, "temperature": "hot"}, 400, "temperature"),
    ("/v1/chat/completions", "stream-options-not-object", {**CHAT, "stream_options": 1}, 400, "stream_options"),
    ("/v1/chat/completions", "unknown-model", {**CHAT, "model": "gpt-9"}, 404, "model"),
    ("/v1/chat/completions", "wrong-modality", {**CHAT, "model": "minilm"}, 400, "model"),
    # was tokenized by the engine for seconds before its 400; now refused by its length, no engine woken
    ("/v1/chat/completions", "message-longer-than-the-context",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": HUGE}]}]}, 400, "messages"),
    ("/v1/completions", "prompt-longer-than-the-context", {"model": "qwen-test", "prompt": HUGE}, 400, "prompt"),
    ("/v1/completions", "prompt-missing", {"model": "qwen-test"}, 400, "prompt"),
    ("/v1/completions", "prompt-object", {"model": "qwen-test", "prompt": {"a": 1}}, 400, "prompt"),
    ("/v1/embeddings", "input-missing", {"model": "minilm"}, 400, "input"),
    ("/v1/embeddings", "input-empty", {"model": "minilm", "input": []}, 400, "input"),
    ("/v1/embeddings", "encoding-unknown", {"model": "minilm", "input": "x", "encoding_format": "int8"}, 400,
     "encoding_format"),
    ("/v1/embeddings", "unknown-model", {"model": "text-embedding-3-small", "input": "x"}, 404, "model"),
    ("/v1/images/generations", "n-zero", {**IMAGE, "n": 0}, 400, "n"),
    ("/v1/images/generations", "n-eleven", {**IMAGE, "n": 11}, 400, "n"),
    ("/v1/images/generations", "n-float", {**IMAGE, "n": 1.5}, 400, "n"),
    ("/v1/images/generations", "size-garbage", {**IMAGE, "size": "huge"}, 400, "size"),
    ("/v1/images/generations", "size-too-big", {**IMAGE, "size": "4096x4096"}, 400, "size"),
    ("/v1/images/generations", "format-unknown", {**IMAGE, "response_format": "jpeg"}, 400, "response_format"),
    ("/v1/images/generations", "prompt-missing", {"model": "sd-turbo"}, 400, "prompt"),
    ("/v1/images/generations", "seed-negative", {**IMAGE, "seed": -1}, 400, "seed"),
    ("/v1/images/generations", "quality-hd-was-ignored", {**IMAGE, "quality": "hd"}, 400, "quality"),
    ("/v1/images/generations", "style-was-ignored", {**IMAGE, "style": "natural"}, 400, "style"),
    ("/v1/images/generations", "background-was-ignored", {**IMAGE, "background": "transparent"}, 400, "background"),
    ("/v1/images/generations", "unknown-model", {**IMAGE, "model": "midjourney"}, 404, "model"),
    ("/v1/audio/speech", "format-aac", {**SPEECH, "response_format": "aac"}, 400, "response_format"),
    ("/v1/audio/speech", "format-ogg", {**SPEECH, "response_format": "ogg"}, 400, "response_format"),
    ("/v1/audio/speech", "voice-missing", {"model": "voice", "input": "hello"}, 400, "voice"),
    ("/v1/audio/speech", "input-too-long", {**SPEECH, "input": "a" * 4097}, 400, "input"),
    ("/v1/audio/speech", "speed-too-fast", {**SPEECH, "speed": 10}, 400, "speed"),
    ("/v1/audio/speech", "model-is-text", {**SPEECH, "model": "qwen-test"}, 400, "model"),
]


def assert_envelope(body: bytes, status: int) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == ("invalid_request_error" if status in (400, 404, 405, 413) else err["type"])
    return dict(err)


@pytest.mark.parametrize(("route", "body", "status", "param"), [(c[0], c[2], c[3], c[4]) for c in CASES],
                         ids=[c[1] for c in CASES])
def test_bad_field_is_a_4xx_naming_the_field(gateway: Gateway, route: str, body: Any, status: int,
                                             param: str | None) -> None:
    resp = gateway.request("POST", route, body)
    assert resp.status == status, resp.body
    err = assert_envelope(resp.body, status)
    assert err["param"] == param
    if status == 404:
        assert err["code"] == "model_not_found"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", "\"caf\xe9\"".encode("latin-1")],
                         ids=["broken", "array", "empty", "not-utf8"])
def test_body_that_is_not_a_json_object(gateway: Gateway, raw: bytes) -> None:
    resp = gateway.request("POST", "/v1/chat/completions", raw=raw)
    assert resp.status == 400
    assert "JSON" in assert_envelope(resp.body, 400)["message"]


def test_oversize_body_declared_is_413(gateway: Gateway) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "x" * (LIMIT + 10)}]}
    resp = gateway.request("POST", "/v1/chat/completions", body)
    assert resp.status == 413
    assert assert_envelope(resp.body, 413)["code"] == "request_too_large"


def test_oversize_body_chunked_is_413(gateway: Gateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    chunks = (b"x" * 16384 for _ in range(LIMIT // 16384 + 2))
    conn.request("POST", "/v1/embeddings", body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {gateway.keys['user']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413
    assert_envelope(resp.read(), 413)
    conn.close()


def test_unknown_route_and_wrong_method(gateway: Gateway) -> None:
    missing = gateway.request("POST", "/v1/moderations", {"input": "x"})
    assert missing.status == 404 and assert_envelope(missing.body, 404)["code"] == "not_found"
    wrong = gateway.request("GET", "/v1/chat/completions")
    assert wrong.status == 405 and assert_envelope(wrong.body, 405)["code"] == "method_not_allowed"


def test_sdk_sees_typed_errors(gateway: Gateway) -> None:
    client = gateway.client()
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        client.images.generate(model="sd-turbo", prompt="x", n=20)
    assert br.value.param == "n"
    with pytest.raises(openai.BadRequestError) as fmt:
        client.audio.speech.create(model="voice", voice="alloy", input="x", response_format="aac")
    assert fmt.value.code == "unsupported_format"


def test_nothing_was_started_or_queued(gateway: Gateway) -> None:
    """Runs last in this module: every request above was rejected before taking a lease."""
    assert gateway.idle()
    states = {e["name"]: e["state"] for e in gateway.status()["engines"]}
    assert states == {"vllm": "stopped", "comfyui": "stopped", "embed": "stopped", "tts": "stopped"}
    failures = [r for r in gateway.usage()["recent"] if r["status"] >= 400]
    assert failures and all(r["gpu_s"] == 0 and r["wait_s"] == 0 for r in failures)
