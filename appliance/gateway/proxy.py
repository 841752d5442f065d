"""Forwarding /v1 requests to engines that speak OpenAI themselves (vLLM, the appliance's workers).

The body goes upstream unchanged over the engine's keep-alive pool (gateway.upstream); the answer
comes back unchanged: a JSON body whole, an SSE stream event by event as it arrives (never buffered
beyond one incomplete event, so a crash mid-event cannot leave half an event before the error
event), raw audio chunk by chunk. Usage is read from the bytes without parsing the whole body
(`find_usage`). A refused connection becomes `EngineUnreachable` (nothing was sent: the caller may
try again under a new lease); an engine silent for its idle timeout `UpstreamTimeout`, any other
transport failure `UpstreamFailed` (502, or an SSE error event once a stream has started). Leaving
early (the client went away, a preemption, a timeout) closes the upstream connection, which is how
the engine learns to abort, and then waits for the engine to confirm it stopped (`engine_request`;
the own workers answer `POST /cancel` once their model thread let go, vLLM aborts on the closed
connection), so the lease held around these calls is given back only once the engine is idle.
It must not choose engines or hold leases: the caller does, around these calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..residency import Lease
from .errors import EngineUnreachable, UpstreamFailed, UpstreamTimeout
from .exchange import Exchange
from .upstream import ConnectFailed, IdleTimeout, Response, ResponseBroken, UpstreamPool, UpstreamPools

log = logging.getLogger("appliance.gateway")

_USAGE = b'"usage":'
DONE = b"data: [DONE]\n\n"
_decoder = json.JSONDecoder()


def find_usage(data: bytes) -> tuple[int | None, int | None] | None:
    """(prompt_tokens, completion_tokens) of the last non-null `"usage"` object in `data`."""
    end = len(data)
    while True:
        i = data.rfind(_USAGE, 0, end)
        if i < 0:
            return None
        j = i + len(_USAGE)
        while j < len(data) and data[j] in b" \t\r\n":
            j += 1
        if data[j:j + 1] == b"{":
            try:
                usage, _ = _decoder.raw_decode(data[j:j + 1024].decode("utf-8", "replace"))
            except ValueError:
                usage = None
            if isinstance(usage, dict):
                pin, pout = usage.get("prompt_tokens"), usage.get("completion_tokens")
                return (pin if isinstance(pin, int) else None, pout if isinstance(pout, int) else None)
        end = i


def _failed(engine: str, exc: Exception, during: str = "the request") -> UpstreamFailed:
    """The client's error names the engine and what went wrong in plain words; the transport's own
    exception text is for the log only."""
    log.warning("engine %s: transport failure during %s: %r", engine, during, exc)
    if isinstance(exc, ConnectFailed):
        return EngineUnreachable(f"engine {engine!r} refused the connection")
    if isinstance(exc, IdleTimeout):  # our own words: how long the engine was silent
        return UpstreamTimeout(f"engine {engine!r} timed out during {during}: {exc}")
    if isinstance(exc, ResponseBroken):
        return UpstreamFailed(f"engine {engine!r} failed during {during}: it closed the connection before the "
                              "answer was complete")
    return UpstreamFailed(f"engine {engine!r} failed during {during}")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One engine as the data path sees it: its keep-alive pool (with the engine's idle timeout), its
    name, and `cancel(request_id)`, which returns once the engine has let go of that request."""

    pool: UpstreamPool
    engine: str
    cancel: Callable[[str], Awaitable[None]]


def upstream(pools: UpstreamPools, lease: Lease) -> Upstream:
    eng = lease.engine
    return Upstream(pools.get(lease.endpoint, eng.idle_timeout_s), eng.name, eng.cancel)


_confirming: set[asyncio.Task[None]] = set()  # cancellations that outlived a twice-cancelled request


async def _engine_let_go(up: Upstream, request_id: str) -> None:
    """Wait until the engine confirms it stopped working on `request_id` (its connection is closed
    already). A second cancellation of the caller (shutdown) stops the wait, not the confirmation."""
    task = asyncio.ensure_future(up.cancel(request_id))
    _confirming.add(task)
    task.add_done_callback(_confirming.discard)
    await asyncio.shield(task)


@contextlib.asynccontextmanager
async def engine_request(up: Upstream, path: str, body: bytes, during: str = "the request",
                         content_type: bytes | None = None) -> AsyncIterator[Response]:
    """Send a request; yield its response once the status and headers are in.

    However the block ends, when it exits the engine is no longer working on the request: a response
    not read to its end (the client went away, a preemption, a broken connection, an idle timeout)
    has its connection closed and the engine's confirmation awaited, so the caller's lease is given
    back only after the engine stopped. Transport failures become `UpstreamFailed` (502).
    """
    try:
        resp = await up.pool.send(path, body, content_type)
    except ConnectFailed as exc:
        raise _failed(up.engine, exc) from exc
    try:
        await resp.headers()
        yield resp
    except (ResponseBroken, IdleTimeout) as exc:
        raise _failed(up.engine, exc, during) from exc
    finally:
        complete = resp.complete
        resp.release()
        if not complete:
            await _engine_let_go(up, resp.request_id)


class StreamMeter:
    """Cuts an SSE byte stream at event boundaries, counts content events, finds the engine's usage."""

    __slots__ = ("audio_s", "chunks", "first_at", "pending", "usage")

    def __init__(self) -> None:
        self.pending = b""
        self.chunks = 0  # content-bearing events: an estimate of completion tokens
        self.usage: tuple[int | None, int | None] | None = None
        self.first_at: float | None = None  # perf_counter() when the first content event was cut
        self.audio_s: float | None = None  # the engine's X-Audio-Seconds (a transcription stream)

    def feed(self, data: bytes) -> bytes:
        """The complete events in `pending + data`; keeps the incomplete tail."""
        buf = self.pending + data if self.pending else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            crlf = buf.rfind(b"\r\n\r\n")
            if crlf < 0:
                self.pending = buf
                return b""
            cut = crlf + 2
        out, self.pending = buf[:cut + 2], buf[cut + 2:]
        # Role and finish chunks carry "content":"" (chat) or "text":"" (completions); the rest one token.
        self.chunks += out.count(b"data: {") - out.count(b'"content":""') - out.count(b'"text":""')
        if self.first_at is None and self.chunks > 0:
            self.first_at = time.perf_counter()
        if _USAGE in out:
            found = find_usage(out)
            if found is not None:
                self.usage = found
        return out


async def post(up: Upstream, path: str, body: bytes, content_type: bytes | None = None) -> tuple[int, bytes, bytes]:
    """(status, body, content type) of a non-streaming request (a JSON body unless `content_type`)."""
    status, data, ctype, _ = await post_metered(up, path, body, content_type)
    return status, data, ctype


async def post_metered(up: Upstream, path: str, body: bytes,
                       content_type: bytes | None = None) -> tuple[int, bytes, bytes, float | None]:
    """`post`, and the engine's `X-Audio-Seconds` (a transcription's audio length) when it sent one."""
    async with engine_request(up, path, body, content_type=content_type) as resp:
        return resp.status, await resp.read(), resp.content_type or b"application/json", resp.audio_s


def _as_error_event(status: int, data: bytes) -> bytes:
    """An upstream error body as the data of an SSE event (vLLM's shape when it already is an envelope)."""
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = None
    if not (isinstance(parsed, dict) and "error" in parsed):
        message = data[:500].decode("utf-8", "replace") or f"engine answered {status}"
        parsed = {"error": {"message": message, "type": "server_error", "param": None, "code": status}}
    return b"data: " + json.dumps(parsed).encode() + b"\n\ndata: [DONE]\n\n"


async def relay_stream(ex: Exchange, up: Upstream, path: str, body: bytes, meter: StreamMeter,
                       content_type: bytes | None = None) -> int:
    """Send an SSE stream from upstream to the client; return the upstream status."""
    async with engine_request(up, path, body, "the stream", content_type) as resp:
        if resp.status != 200:
            data = await resp.read()
            if ex.started:  # keep-alive comments already began the event stream
                await ex.end(_as_error_event(resp.status, data))
            else:
                await ex.respond(resp.status, data, resp.content_type or b"application/json")
            return resp.status
        meter.audio_s = resp.audio_s
        await ex.start_sse()
        async for chunk in resp.chunks():
            out = meter.feed(chunk)
            if out:
                await ex.write(out)
                if out.endswith(DONE):
                    ex.delivered()  # a client may hang up now; the engine's last bytes are a formality
        await ex.end(meter.pending)
        return 200


async def relay_raw(ex: Exchange, up: Upstream, path: str, body: bytes, content_type: bytes) -> tuple[int, bytes]:
    """Pass a binary response (audio) through as it arrives; return (status, all bytes sent)."""
    async with engine_request(up, path, body) as resp:
        if resp.status != 200:
            data = await resp.read()
            await ex.respond(resp.status, data, resp.content_type or b"application/json")
            return resp.status, data
        if resp.content_type.startswith(b"audio/"):
            content_type = resp.content_type
        headers = [(b"content-type", content_type)]
        if resp.content_length is not None:
            headers.append((b"content-length", b"%d" % resp.content_length))
        await ex.start(200, headers)
        parts: list[bytes] = []
        async for chunk in resp.chunks():
            parts.append(chunk)
            await ex.write(chunk)
        await ex.end()
        return 200, b"".join(parts)
