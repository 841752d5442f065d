"""One HTTP exchange on the raw ASGI data path: reading the body within the size limit, watching for
the client going away, and sending a JSON body, an error or a stream (with `KeepAlive` comments while
a streaming request waits).

A client disconnect cancels the task that serves the request: unwinding closes the engine connection,
waits until the engine confirms it stopped (gateway.proxy.engine_request, gateway.comfy), and only then
releases the model's lease; uvicorn only reports a disconnect through
`receive()`, and its `send()` silently does nothing once the client is gone, hence the watcher.
It must not know routes, models or engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from .errors import ApiError, InvalidRequest, PayloadTooLarge

WATCH_AFTER_S = 0.05  # a disconnect is noticed this late at worst; faster requests never need a watcher
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # reverse proxies must not buffer the stream
]


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class Exchange:
    __slots__ = ("_finished", "_send", "_task", "_timer", "_watcher", "disconnected", "receive", "scope",
                 "sse", "started", "status")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.started = False  # response headers sent
        self.sse = False  # the response is an event stream
        self.status = 0
        self.disconnected = False
        self._finished = False
        self._watcher: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return bytes(value)
        return None

    async def read_body(self, limit: int) -> bytes:
        length = self.header(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise InvalidRequest("Content-Length is not a number") from None
            if declared > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientGone("the client went away while sending the body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- disconnect ------------------------------------------------------------------------------
    def watch_disconnect(self, after_s: float = WATCH_AFTER_S) -> None:
        """From `after_s` on, a client disconnect cancels the current task (call after the body is read).

        Most requests finish sooner, and then cost no watcher task at all; a client that leaves
        earlier is noticed at `after_s`.
        """
        self._task = asyncio.current_task()
        if after_s <= 0:
            self._start_watcher()
            return
        self._timer = asyncio.get_running_loop().call_later(after_s, self._start_watcher)

    def _start_watcher(self) -> None:
        self._timer = None
        if not self._finished:
            self._watcher = asyncio.ensure_future(self.receive())
            self._watcher.add_done_callback(self._on_receive)

    def _on_receive(self, fut: asyncio.Future[Any]) -> None:
        if self._finished or fut.cancelled() or self._task is None:
            return
        self.disconnected = True
        self._task.cancel("client disconnected")

    def delivered(self) -> None:
        """The client has all it needs (e.g. `data: [DONE]`): leaving now is not a disconnect."""
        self.close()

    def close(self) -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()

    # -- responses -------------------------------------------------------------------------------
    async def respond(self, status: int, body: bytes, content_type: bytes = b"application/json",
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if extra:
            headers += extra
        self.started = True
        self.status = status
        self._finished = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def start_sse(self) -> None:
        if not self.started:
            self.sse = True
            await self.start(200, SSE_HEADERS)

    async def write(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self, chunk: bytes = b"") -> None:
        self._finished = True
        await self._send({"type": "http.response.body", "body": chunk})

    async def fail(self, err: ApiError) -> None:
        """Report `err`: as a JSON error if nothing was sent yet, as a last SSE event otherwise."""
        if not self.started:
            payload = err.payload()
            self.started = True
            self.status = err.status
            self._finished = True
            await self._send(err.asgi_start(len(payload)))
            await self._send({"type": "http.response.body", "body": payload})
        elif self.sse:
            await self.end(err.sse_event() + b"data: [DONE]\n\n")
        else:
            # A raw body (audio) was under way: only dropping the connection tells the client it is
            # truncated, and uvicorn drops it when the application raises after the response started.
            raise ResponseAborted(err.message)


class StreamSink(Protocol):
    """Where a relayed engine stream goes: the client's `Exchange`, or `gather.Gathered` when the
    client asked for one whole answer that the gateway builds from the stream."""

    started: bool

    async def respond(self, status: int, body: bytes, content_type: bytes = b"application/json",
                      extra: list[tuple[bytes, bytes]] | None = None) -> None: ...

    async def start_sse(self) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def end(self, chunk: bytes = b"") -> None: ...

    def delivered(self) -> None: ...


class KeepAlive:
    """SSE comments every `interval_s` while a streaming request waits (for a lease, for a restart).

    Nothing is sent if the wait ends within the first interval; otherwise the 200 and the event-stream
    headers go out with the first comment, so any later error becomes an SSE error event.
    """

    __slots__ = ("_comment", "_ex", "_interval_s", "_task", "_timer")

    def __init__(self, ex: StreamSink, comment: str | Callable[[], str], interval_s: float) -> None:
        """`comment`: the text, or a function giving it anew for each comment (a wait estimate)."""
        self._ex = ex
        self._comment = comment
        self._interval_s = interval_s
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._timer is None and self._task is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._begin)

    def _begin(self) -> None:
        self._timer = None
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        await self._ex.start_sse()
        while True:
            text = self._comment() if callable(self._comment) else self._comment
            await self._ex.write(f": {text}\n\n".encode())
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # never two writers on one response


class ResponseAborted(Exception):
    """Raised to make the server drop a connection whose response body cannot be completed."""
