"""Text on a box without vLLM: /v1/chat/completions and /v1/completions served by the appliance's
own text worker (a tiny random-weight Llama built by the tests), through the official client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Gateway, launch, worker_engine


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, tiny_llama_dir: Path) -> Iterator[Gateway]:
    doc = {
        "engines": {"text": worker_engine("text", str(tiny_llama_dir))},
        "models": {"tiny-llama": {"engine": "text", "modality": "text", "vram_gb": 0.1, "max_tokens_cap": 12}},
    }
    gw = launch(module_tmp / "daemon", doc, keys={"user": False, "admin": True})
    try:
        yield gw
    finally:
        gw.stop()


def test_chat_streams_real_tokens_and_matches_the_non_streamed_answer(gateway: Gateway) -> None:
    client = gateway.client()
    messages = [{"role": "user", "content": "hello world"}]
    whole = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=8, seed=3,
                                           temperature=0)  # type: ignore[arg-type]
    assert whole.choices[0].message.content and whole.usage is not None
    assert whole.usage.completion_tokens <= 8 and whole.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=8, seed=3,
                                                 temperature=0, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_are_capped_by_the_model(gateway: Gateway) -> None:
    out = gateway.client().completions.create(model="tiny-llama", prompt="the quick brown fox", max_tokens=500,
                                              temperature=0)
    assert out.usage is not None and out.usage.completion_tokens <= 12  # max_tokens_cap
    assert gateway.engine("text")["state"] == "ready"


def test_tools_sent_through_the_gateway_were_ignored_now_a_400_in_the_gateways_envelope(gateway: Gateway) -> None:
    import openai

    client = gateway.client()
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                       tools=[tool])  # type: ignore[list-item]
    body = err.value.body
    assert isinstance(body, dict)  # the SDK hands over the envelope's "error" object
    assert (body["param"], body["code"], body["type"]) == ("tools", "unsupported_parameter", "invalid_request_error")
    with pytest.raises(openai.BadRequestError) as json_mode:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_object"})
    assert isinstance(json_mode.value.body, dict) and json_mode.value.body["param"] == "response_format"
