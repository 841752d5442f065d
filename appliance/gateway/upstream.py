"""A lean HTTP/1.1 client for the /v1 data path to loopback engines: one keep-alive pool per engine.

Why not aiohttp here: measured on the 2-core development machine, a bare uvicorn passthrough proxy
spends 205-235 µs of CPU per request with an aiohttp client and 86-119 µs with this one (responses
parsed by httptools, the C parser uvicorn already uses; one write per request; one future per wait).
aiohttp stays for everything else (ComfyUI, control routes, probes).

Scope, deliberately small: requests with a known body to `http://host:port` engines; responses with
Content-Length, chunked, or delimited by the connection closing. A response body is read whole
(`read`) or chunk by chunk as it arrives (`chunks`, with flow control: reading pauses above 256 KiB
buffered). Idle connections are reused for at most `IDLE_MAX_S`, below uvicorn's 5 s keep-alive (vLLM),
so a pooled connection is not one the engine is closing. Nothing is retried here: a refused connect
raises `ConnectFailed` (nothing was sent), a connection lost before the response completed raises
`ResponseBroken`, and an engine that sends no byte for the pool's `idle_timeout_s` (the headers
included: a whole answer's first byte comes when it is complete) raises `IdleTimeout` and has its
connection closed. A response not read to its end closes its connection (that is how an engine learns
its client went away), so always `release()` it; `complete` says whether the engine finished the
request. Every request carries an `X-Request-Id` (`Response.request_id`) by which the engine can be
asked to cancel it. The STT worker's `X-Audio-Seconds` header is kept (`Response.audio_s`) for metering.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools

from ..logsetup import REQUEST_ID

CONNECT_TIMEOUT_S = 10.0
IDLE_MAX_S = 2.0
MAX_IDLE = 256
HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    pass


class ConnectFailed(UpstreamError):
    """The TCP connection could not be made: the engine never saw the request."""


class ResponseBroken(UpstreamError):
    """The connection failed or closed before the response was complete."""


def _seconds(value: bytes) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0.0 <= seconds < 1e7 else None


def engine_request_id() -> str:
    """The id one engine call carries (`X-Request-Id`; a worker's `/cancel` names it): the client request's
    own id with a suffix, so the engine's log lines lead back to it (a resumed stream makes several calls
    for one request), or a fresh one outside a request."""
    suffix = secrets.token_hex(4)
    client = REQUEST_ID.get()
    return f"{client}-{suffix}" if client else secrets.token_hex(8)


class IdleTimeout(UpstreamError):
    """The engine sent no byte for the pool's idle timeout; the connection was closed."""


class Response:
    __slots__ = ("_buffered", "_chunked", "_chunks", "_conn", "_done", "_error", "_headers_done", "_idle_s", "_keep",
                 "_streaming", "_waiter", "aborted", "audio_s", "content_length", "content_type", "request_id",
                 "status")

    def __init__(self, conn: Connection, request_id: str = "", idle_s: float | None = None) -> None:
        self._conn = conn
        self.request_id = request_id
        self._idle_s = idle_s
        self.status = 0
        self.content_type = b""
        self.content_length: int | None = None
        self.audio_s: float | None = None  # X-Audio-Seconds: the STT worker's length of the audio it decoded
        self._chunked = False
        self._keep = True
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._headers_done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._streaming = False
        self.aborted = False

    # -- fed by the connection -------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._streaming and self._buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, keep_alive: bool) -> None:
        self._done = True
        self._keep = keep_alive
        self._wake()

    def _lost(self, exc: BaseException | None) -> None:
        if self._done or self._error is not None:
            return
        if self._headers_done and self.content_length is None and not self._chunked:
            self._finish(False)  # the body was delimited by the connection closing
            return
        self._error = ResponseBroken(f"connection closed before the response was complete ({exc!r})")
        self._wake()

    # -- read by the caller ----------------------------------------------------------------------
    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        if self._idle_s is None:
            await waiter
            return
        timer = loop.call_later(self._idle_s, self._idle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    def _idle(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() or self._done or self._error is not None:
            return
        self._error = IdleTimeout(f"the engine sent nothing for {self._idle_s:g} s")
        self._keep = False
        self._conn.close()  # the engine learns its client went away
        self._wake()

    @property
    def complete(self) -> bool:
        """The engine sent the whole response: it is not working on this request any more."""
        return self._done and not self.aborted and self._error is None

    async def headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; ends at the end of the response."""
        self._streaming = True
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered < HIGH_WATER:
                    self._conn.resume()
                yield data
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    def abort(self) -> None:
        """Stop the response: close the connection (the engine aborts the request); `chunks()` yields
        what already arrived, then ends. Safe to call from a callback, at any time."""
        if self._done or self._error is not None:
            return
        self.aborted = True
        self._keep = False
        self._done = True
        self._conn.close()
        self._wake()

    def release(self) -> None:
        """Give the connection back (complete response) or close it (anything else)."""
        conn = self._conn
        if conn.response is not self:
            return
        conn.response = None
        if self._done and self._keep and self._error is None and not self._chunks:
            conn.pool.put_back(conn)
        else:
            conn.close()


class Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False

    # asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            resp = self.response
            self.close()
            if resp is not None:
                resp._lost(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._lost(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.response
        if resp is None:
            return
        lower = name.lower()
        if lower == b"content-type":
            resp.content_type = value
        elif lower == b"content-length":
            resp.content_length = int(value)
        elif lower == b"transfer-encoding":
            resp._chunked = b"chunked" in value.lower()
        elif lower == b"x-audio-seconds":
            resp.audio_s = _seconds(value)

    def on_headers_complete(self) -> None:
        resp = self.response
        if resp is not None:
            resp.status = self.parser.get_status_code()
            resp._headers_done = True
            resp._wake()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response._finish(self.parser.should_keep_alive())

    # flow control and lifetime
    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections to one engine (`host`, `port`); `idle_timeout_s`: None waits forever."""

    def __init__(self, host: str, port: int, idle_timeout_s: float | None = None) -> None:
        self.host = host
        self.port = port
        self.idle_timeout_s = idle_timeout_s
        self._idle: list[Connection] = []
        self._host = b"Host: %s:%d\r\n" % (host.encode(), port)
        self._head = self._host + b"Content-Type: application/json\r\nContent-Length: "

    def _take(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_MAX_S:
                return conn
            conn.close()
        return None

    def put_back(self, conn: Connection) -> None:
        if conn.closed or len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        return conn

    async def send(self, path: str, body: bytes, content_type: bytes | None = None) -> Response:
        """Send a JSON POST (or one of `content_type`: a multipart upload); return at once (`await
        resp.headers()` next). From here on the engine may be working on the request: `release()` the
        response whatever happens."""
        conn = self._take() or await self._connect()
        resp = Response(conn, engine_request_id(), self.idle_timeout_s)
        conn.response = resp
        fields = self._head if content_type is None else (
            self._host + b"Content-Type: " + content_type + b"\r\nContent-Length: ")
        head = b"POST %s HTTP/1.1\r\nX-Request-Id: %s\r\n%s%d\r\n\r\n" % (
            path.encode(), resp.request_id.encode(), fields, len(body))
        transport = cast(asyncio.Transport, conn.transport)  # set in connection_made, before connect returns
        if len(body) < 65536:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        return resp

    async def post(self, path: str, body: bytes) -> Response:
        """Send a JSON POST; return once the response's status and headers are in."""
        resp = await self.send(path, body)
        try:
            await resp.headers()
        except BaseException:
            resp.release()  # incomplete: closes the connection
            raise
        return resp

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class UpstreamPools:
    """One pool per engine endpoint (`http://host:port`), created on first use."""

    def __init__(self) -> None:
        self._pools: dict[str, UpstreamPool] = {}

    def get(self, endpoint: str, idle_timeout_s: float | None = None) -> UpstreamPool:
        pool = self._pools.get(endpoint)
        if pool is None:
            hostport = endpoint.split("://", 1)[-1].rstrip("/")
            host, _, port = hostport.rpartition(":")
            pool = self._pools[endpoint] = UpstreamPool(host, int(port))
        pool.idle_timeout_s = idle_timeout_s
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
