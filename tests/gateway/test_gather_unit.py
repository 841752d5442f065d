"""One whole chat answer built from a stitched engine stream (gateway.gather), without processes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from appliance.gateway.gather import Gathered, whole_answer
from appliance.gateway.resume import CHAT_ROUTE, can_resume


def event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> bytes:
    return event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]})


USAGE = event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": [],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
WHOLE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.mark.parametrize(("body", "ok"), [
    (WHOLE, True),
    ({**WHOLE, "stream": False}, True),
    ({**WHOLE, "stream": True}, False),
    ({**WHOLE, "stream_options": {"include_usage": True}}, False),  # the engine refuses it without stream
    ({**WHOLE, "n": 3}, False),
    ({**WHOLE, "tools": [{"type": "function", "function": {"name": "f"}}]}, False),
])
def test_which_whole_answers_can_be_resumed(body: dict[str, Any], ok: bool) -> None:
    assert can_resume(CHAT_ROUTE, body, whole=True) is ok


def test_the_answer_joins_the_text_and_keeps_the_last_finish_and_the_usage() -> None:
    events = (chunk({"role": "assistant", "content": ""}) + b": waiting for model m to load\n\n"
              + chunk({"content": "Hello"}) + chunk({"content": " there"}, "stop", stop_reason=None) + USAGE
              + b"data: [DONE]\n\n")
    status, answer = whole_answer(events)
    assert status == 200
    assert answer == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "tool_calls": []},
                     "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_reasoning_and_logprobs_are_joined_in_order() -> None:
    lp = [{"token": "A", "logprob": -0.1, "top_logprobs": []}, {"token": "B", "logprob": -0.2, "top_logprobs": []}]
    events = (chunk({"reasoning_content": "think "}) + chunk({"reasoning_content": "more"})
              + chunk({"content": "A"}, logprobs={"content": lp[:1]}) + chunk({"content": "B"}, "length",
                                                                             logprobs={"content": lp[1:]}))
    _, answer = whole_answer(events)
    choice = answer["choices"][0]
    assert choice["message"]["reasoning_content"] == "think more" and choice["message"]["content"] == "AB"
    assert choice["logprobs"] == {"content": lp} and choice["finish_reason"] == "length"
    assert "usage" not in answer


def test_an_error_in_the_stream_is_the_answer() -> None:
    error = {"error": {"message": "engine failed", "type": "InternalServerError", "param": None, "code": 500}}
    status, answer = whole_answer(chunk({"content": "Hel"}) + event(error) + b"data: [DONE]\n\n")
    assert (status, answer) == (500, error)


def test_a_stream_without_chunks_is_a_bad_gateway() -> None:
    status, answer = whole_answer(b"data: [DONE]\n\n")
    assert status == 502 and "without an answer" in answer["error"]["message"]


def test_a_data_line_that_is_not_json_is_skipped() -> None:
    status, answer = whole_answer(b"data: {broken\n\n" + chunk({"content": "ok"}, "stop") + b"data: [DONE]\n\n")
    assert status == 200 and answer["choices"][0]["message"]["content"] == "ok"


def test_an_engine_reply_without_a_stream_is_passed_on_as_it_came() -> None:
    sink = Gathered()
    body = b'{"error":{"message":"bad","type":"BadRequestError","param":"messages","code":400}}'
    asyncio.run(sink.respond(400, body))
    assert sink.answer(400) == (400, body, b"application/json")


def test_a_completion_stream_becomes_one_text_completion() -> None:
    def text(t: str, finish: str | None = None) -> bytes:
        return event({"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                      "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": finish,
                                   "stop_reason": None}]})
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    events = text(" blue") + text(" sky", "length") + event(
        {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m", "choices": [], "usage": usage}
    ) + b"data: [DONE]\n\n"
    status, answer = whole_answer(events)
    assert status == 200
    assert answer == {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                      "choices": [{"index": 0, "text": " blue sky", "logprobs": None, "finish_reason": "length",
                                   "stop_reason": None, "prompt_logprobs": None}],
                      "usage": usage}
