"""The pieces of the data path that need no server: SSE framing and usage, request checks, the body
limit and disconnect handling of one exchange."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from appliance.gateway import validation
from appliance.gateway.errors import InvalidRequest, PayloadTooLarge
from appliance.gateway.exchange import ClientGone, Exchange
from appliance.gateway.proxy import StreamMeter, find_usage

CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'
ROLE = b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}\n\n'
DONE = b"data: [DONE]\n\n"


def test_meter_forwards_only_complete_events_whatever_the_read_boundaries() -> None:
    stream = ROLE + CHUNK % b"a" + CHUNK % b"b" + CHUNK % b"c" + USAGE + DONE
    for size in (1, 7, 64, len(stream)):
        meter = StreamMeter()
        out = b""
        for i in range(0, len(stream), size):
            piece = meter.feed(stream[i:i + size])
            assert piece == b"" or piece.endswith(b"\n\n")  # never half an event
            out += piece
        assert out == stream and meter.pending == b""
        assert meter.usage == (7, 3)
        assert meter.chunks == 4  # three tokens and the usage chunk; the role chunk is not a token


def test_meter_counts_tokens_when_the_client_did_not_ask_for_usage() -> None:
    meter = StreamMeter()
    meter.feed(ROLE + CHUNK % b"x" + CHUNK % b"y" + DONE)
    assert meter.usage is None and meter.chunks == 2


def test_meter_keeps_a_torn_event_back() -> None:
    meter = StreamMeter()
    assert meter.feed(CHUNK % b"a" + b'data: {"id":"c","cho') == CHUNK % b"a"
    assert meter.pending == b'data: {"id":"c","cho'


def test_find_usage_takes_the_last_non_null_usage() -> None:
    body = b'{"usage":null,"choices":[{"x":{"usage":1}}],"usage": {"prompt_tokens":4,"completion_tokens":2}}'
    assert find_usage(body) == (4, 2)
    assert find_usage(b'{"choices":[]}') is None
    assert find_usage(b'{"usage":{"prompt_tokens":5,"total_tokens":5}}') == (5, None)  # embeddings


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user"}], "n": 0}, "n"),
    ({"messages": [{"role": "user"}], "top_p": 2}, "top_p"),
    ({"messages": [{"role": "user"}], "stream_options": {"include_usage": "yes"}}, "include_usage"),
    ({"messages": [{"role": "user"}], "max_completion_tokens": True}, "max_completion_tokens"),
])
def test_chat_checks_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validation.check_chat(body)
    assert err.value.param == param and param in err.value.message


def test_chat_check_reports_what_the_gateway_uses() -> None:
    gen = validation.check_chat({"messages": [{"role": "user"}], "stream": True, "max_tokens": 9,
                                 "stream_options": {"include_usage": True}})
    assert gen == validation.Generation(True, True, "max_tokens", 9)


def test_image_request_defaults_and_sizes() -> None:
    req = validation.check_image({"prompt": "p"})
    assert (req.n, req.width, req.height, req.response_format, req.seed) == (1, None, None, "url", None)
    assert validation.parse_size("1792x1024") == (1792, 1024)
    with pytest.raises(InvalidRequest):
        validation.parse_size("1000x1001")  # not a multiple of 8


def test_speech_accepts_any_voice_name_and_rejects_aac() -> None:
    assert validation.check_speech({"input": "x", "voice": "coral", "speed": 2}).speed == 2.0
    assert validation.check_speech({"input": "x", "voice": {"id": "v1"}}).response_format == "mp3"
    with pytest.raises(InvalidRequest) as err:
        validation.check_speech({"input": "x", "voice": "a", "response_format": "aac"})
    assert err.value.code == "unsupported_format"


def exchange(messages: list[dict[str, Any]],
             headers: list[tuple[bytes, bytes]] | None = None) -> tuple[Exchange, asyncio.Event]:
    """An exchange over scripted receive() messages; setting the event makes the client go away."""
    queue = list(messages)
    gate = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await gate.wait()  # "the client goes away" when the test sets it
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    return Exchange({"type": "http", "headers": headers or []}, receive, send), gate


async def test_body_over_the_limit_in_chunks_is_413() -> None:
    ex, _ = exchange([{"type": "http.request", "body": b"x" * 60, "more_body": True},
                   {"type": "http.request", "body": b"x" * 60, "more_body": False}])
    with pytest.raises(PayloadTooLarge):
        await ex.read_body(100)


async def test_declared_length_over_the_limit_is_413_before_reading() -> None:
    ex, _ = exchange([], headers=[(b"content-length", b"1000")])
    with pytest.raises(PayloadTooLarge):
        await ex.read_body(100)


async def test_body_in_pieces_is_joined() -> None:
    ex, _ = exchange([{"type": "http.request", "body": b'{"a":', "more_body": True},
                   {"type": "http.request", "body": b"1}", "more_body": False}])
    assert json.loads(await ex.read_body(100)) == {"a": 1}


async def test_client_gone_while_sending_the_body() -> None:
    ex, _ = exchange([{"type": "http.request", "body": b'{"a":', "more_body": True}, {"type": "http.disconnect"}])
    with pytest.raises(ClientGone):
        await ex.read_body(100)
    assert ex.disconnected


async def test_disconnect_cancels_the_serving_task() -> None:
    ex, gone = exchange([])
    started = asyncio.Event()

    async def serve() -> None:
        ex.watch_disconnect(after_s=0)
        started.set()
        await asyncio.Event().wait()  # an upstream that never answers

    task = asyncio.ensure_future(serve())
    await started.wait()
    gone.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ex.disconnected


async def test_no_cancel_once_the_response_is_finished() -> None:
    ex, gone = exchange([])

    async def serve() -> None:
        ex.watch_disconnect(after_s=0)  # the watcher runs from now on
        await ex.respond(200, b"{}")
        ex.close()
        gone.set()
        watcher = ex._watcher
        assert watcher is not None
        await asyncio.wait([watcher])  # ended, and its done callback (registered first) has run

    await asyncio.ensure_future(serve())  # completes: not cancelled by the client leaving
    assert not ex.disconnected
