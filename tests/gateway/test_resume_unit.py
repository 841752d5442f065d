"""The stitching of a preempted stream (gateway.resume), without processes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.gateway.resume import CHAT_ROUTE, COMPLETIONS_ROUTE, StreamStitch, can_resume


def event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(cid: str, delta: dict[str, Any], finish: str | None = None, created: int = 1) -> bytes:
    return event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": "m",
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10}


@pytest.mark.parametrize(("body", "ok"), [
    (BODY, True),
    ({**BODY, "stream": False}, False),
    ({**BODY, "n": 2}, False),
    ({**BODY, "n": 1}, True),
    ({**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]}, False),
    ({**BODY, "tools": []}, True),
    ({**BODY, "response_format": {"type": "json_object"}}, False),
    ({**BODY, "response_format": {"type": "text"}}, True),
    ({**BODY, "guided_json": {"type": "object"}}, False),
    ({**BODY, "continue_final_message": True,
      "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]}, True),
    ({**BODY, "continue_final_message": True,
      "messages": [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}, False),
])
def test_which_streams_can_be_resumed(body: dict[str, Any], ok: bool) -> None:
    assert can_resume(CHAT_ROUTE, body) is ok


COMPLETION = {"model": "m", "prompt": "The sky is", "stream": True, "max_tokens": 10}


@pytest.mark.parametrize(("body", "ok"), [
    (COMPLETION, True),
    ({**COMPLETION, "prompt": ["a", "b"]}, False),  # several prompts: several choices
    ({**COMPLETION, "prompt": [1, 2, 3]}, False),  # token ids: the text sent cannot be appended
    ({**COMPLETION, "echo": True}, False),
    ({**COMPLETION, "suffix": "."}, False),
    ({**COMPLETION, "logprobs": 2}, False),  # text offsets would restart
    ({**COMPLETION, "logprobs": None}, True),
    ({**COMPLETION, "n": 2}, False),
    ({**COMPLETION, "stream": False}, False),
])
def test_which_completion_streams_can_be_resumed(body: dict[str, Any], ok: bool) -> None:
    assert can_resume(COMPLETIONS_ROUTE, body) is ok
    assert not can_resume("/v1/embeddings", body)


def text_chunk(cid: str, text: str, finish: str | None = None, created: int = 1) -> bytes:
    return event({"id": cid, "object": "text_completion", "created": created, "model": "m",
                  "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]})


def test_a_completion_continues_with_the_text_sent_appended_to_its_prompt() -> None:
    s = StreamStitch(dict(COMPLETION), COMPLETIONS_ROUTE)
    first = text_chunk("a", " blue") + text_chunk("a", " and")
    assert s.feed(first) == first
    cont = json.loads(s.continuation())
    assert cont["prompt"] == "The sky is blue and"
    assert cont["max_tokens"] == 8 and "messages" not in cont and "continue_final_message" not in cont
    assert COMPLETION["prompt"] == "The sky is"  # the original body is untouched
    # A completion has no role-only opening chunk: the continuation's first chunk is text, and is kept.
    out = parsed(s.feed(text_chunk("b", " wide", created=9) + text_chunk("b", ".", "stop", created=9)))
    assert [c["choices"][0]["text"] for c in out] == [" wide", "."]
    assert {(c["id"], c["created"]) for c in out} == {("a", 1)}
    assert s.finished and "".join(s.text) == " blue and wide."


def test_first_segment_passes_unchanged_and_continuation_carries_the_text_so_far() -> None:
    s = StreamStitch(dict(BODY))
    first = chunk("a", {"role": "assistant", "content": ""}) + chunk("a", {"content": "Hello"}) + \
        chunk("a", {"content": " there"})
    assert s.feed(first) == first
    cont = json.loads(s.continuation())
    assert cont["messages"][-1] == {"role": "assistant", "content": "Hello there"}
    assert cont["messages"][:-1] == BODY["messages"]
    assert (cont["continue_final_message"], cont["add_generation_prompt"]) == (True, False)
    assert cont["max_tokens"] == 8
    assert BODY["max_tokens"] == 10  # the original body is untouched


def test_continuation_segments_look_like_the_first_stream() -> None:
    s = StreamStitch({**BODY, "stream_options": {"include_usage": True}})
    s.feed(chunk("a", {"role": "assistant", "content": ""}, created=5) + chunk("a", {"content": "Hello"}, created=5))
    s.continuation()
    usage = {"id": "b", "object": "chat.completion.chunk", "created": 9, "model": "m", "choices": [],
             "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
    out = s.feed(chunk("b", {"role": "assistant", "content": ""}, created=9)
                 + chunk("b", {"content": " world"}, created=9)
                 + chunk("b", {"content": "!"}, "stop", created=9) + event(usage) + b"data: [DONE]\n\n")
    events = [e for e in out.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    parsed = [json.loads(e[6:]) for e in events[:-1]]
    assert [p["id"] for p in parsed] == ["a", "a", "a"]  # the role-only opening chunk is gone
    assert {p["created"] for p in parsed} == {5}
    assert [p["choices"][0]["delta"]["content"] for p in parsed[:2]] == [" world", "!"]
    # no usage per chunk from this engine: the re-prefilled "Hello" counted as completion, not prompt
    assert parsed[2]["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    assert s.finished


def test_a_client_prefill_is_extended_not_duplicated() -> None:
    body = {**BODY, "continue_final_message": True,
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]}
    s = StreamStitch(body)
    s.feed(chunk("a", {"content": " here"}))
    cont = json.loads(s.continuation())
    assert cont["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure, here"}]
    assert body["messages"][1]["content"] == "Sure,"


def test_max_completion_tokens_shrinks_too_and_never_below_one() -> None:
    s = StreamStitch({**BODY, "max_completion_tokens": 2, "max_tokens": None})
    s.feed(chunk("a", {"content": "x"}) + chunk("a", {"content": "y"}))
    assert json.loads(s.continuation())["max_completion_tokens"] == 1


def test_a_stream_preempted_twice_continues_from_everything_sent() -> None:
    s = StreamStitch({**BODY, "stream_options": {"include_usage": True}})
    s.feed(chunk("a", {"role": "assistant", "content": ""}) + chunk("a", {"content": "one"}))
    s.continuation()
    s.feed(chunk("b", {"role": "assistant", "content": ""}) + chunk("b", {"content": " two"}))
    cont = json.loads(s.continuation())
    assert cont["messages"][-1] == {"role": "assistant", "content": "one two"}
    assert len(cont["messages"]) == len(BODY["messages"]) + 1  # one assistant message, not one per pause
    assert cont["max_tokens"] == 8
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
             "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    out = s.feed(chunk("c", {"content": " three"}, "length") + event(usage))
    last = json.loads(out.split(b"\n\n")[1][6:])
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def counted(cid: str, delta: dict[str, Any], prompt: int, done: int, finish: str | None = None) -> bytes:
    """A chunk with vLLM's continuous_usage_stats: the counts so far."""
    return event({"id": cid, "object": "chat.completion.chunk", "created": 1, "model": "m",
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                  "usage": {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}})


def final_usage(cid: str, prompt: int, done: int) -> bytes:
    return event({"id": cid, "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                  "usage": {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}})


def parsed(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]


def test_every_segment_asks_the_engine_for_counts_in_each_chunk() -> None:
    s = StreamStitch({**BODY, "stream_options": {"include_usage": False}})
    first = json.loads(s.request())
    assert first["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert json.loads(s.continuation())["stream_options"] == first["stream_options"]


def test_engine_counts_make_tokens_and_usage_exact_and_stay_hidden_unless_asked() -> None:
    """A chunk may carry several tokens (a held-back UTF-8 character, a stop-string prefix): the
    engine's count, not the chunk count, is what was sent."""
    s = StreamStitch(dict(BODY))  # the client asked for no usage at all
    out = s.feed(counted("a", {"role": "assistant", "content": ""}, 7, 0)
                 + counted("a", {"content": "Hé"}, 7, 3) + counted("a", {"content": "llo"}, 7, 4))
    assert all("usage" not in p for p in parsed(out))  # stripped: the client did not ask
    cont = json.loads(s.continuation())
    assert cont["max_tokens"] == 6  # 10 - 4 tokens, though only 2 chunks carried text
    out = s.feed(counted("b", {"role": "assistant", "content": ""}, 12, 0)  # 7 + the 5 re-prefilled
                 + counted("b", {"content": "!"}, 12, 1, "stop") + final_usage("b", 12, 1) + b"data: [DONE]\n\n")
    assert [p["choices"][0]["delta"] for p in parsed(out)] == [{"content": "!"}]  # no usage chunk either
    assert out.endswith(b"data: [DONE]\n\n")
    assert s.usage == (7, 5)  # what the usage record gets: the original prompt, every token sent


def test_a_client_that_asked_for_counts_gets_them_stitched() -> None:
    s = StreamStitch({**BODY, "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    s.feed(counted("a", {"role": "assistant", "content": ""}, 7, 0) + counted("a", {"content": "one"}, 7, 2))
    s.continuation()
    out = parsed(s.feed(counted("b", {"content": " two"}, 10, 1) + final_usage("b", 10, 1)))
    assert [p["usage"] for p in out] == [{"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}] * 2
    assert [p["id"] for p in out] == ["a", "a"]
