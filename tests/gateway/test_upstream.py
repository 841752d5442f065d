"""The data path's HTTP/1.1 client against scripted loopback servers: body framings, keep-alive reuse,
idle expiry, broken and refused connections, early release, and flow control on a fast stream."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from appliance.gateway import upstream
from appliance.gateway.upstream import ConnectFailed, IdleTimeout, ResponseBroken, UpstreamPool

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            writer.close()

    async def __aenter__(self) -> UpstreamPool:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return UpstreamPool("127.0.0.1", port)

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def reply(body: bytes, extra: bytes = b"") -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                     % (len(body), extra, body))
        await writer.drain()
    return script


async def test_content_length_response_and_keep_alive_reuse() -> None:
    server = Server(reply(b'{"ok":true}'))
    async with server as pool:
        for i in range(3):
            resp = await pool.post("/v1/x", b'{"n":%d}' % i)
            assert (resp.status, resp.content_type, await resp.read()) == (200, b"application/json", b'{"ok":true}')
            resp.release()
    assert server.connections == 1 and len(server.requests) == 3
    assert server.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and server.requests[2].endswith(b'{"n":2}')


async def test_idle_connections_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "IDLE_MAX_S", 0.0)  # every pooled connection is already too old
    server = Server(reply(b"{}"))
    async with server as pool:
        for _ in range(2):
            resp = await pool.post("/", b"{}")
            await resp.read()
            resp.release()
    assert server.connections == 2


async def test_chunked_stream_arrives_as_it_is_sent() -> None:
    sent_second = asyncio.Event()
    got_first = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await got_first.wait()  # the client must see the first piece before the second exists
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()
        sent_second.set()

    server = Server(script)
    async with server as pool:
        resp = await pool.post("/", b"{}")
        pieces = []
        async for chunk in resp.chunks():
            pieces.append(chunk)
            got_first.set()
        resp.release()
        assert b"".join(pieces) == b"data: 1data: 2" and pieces[0] == b"data: 1"
        again = await pool.post("/", b"{}")  # the connection went back to the pool
        got_first.set()
        await again.read()
        again.release()
    assert server.connections == 1


async def test_body_delimited_by_close() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with Server(script) as pool:
        resp = await pool.post("/", b"{}")
        assert await resp.read() == b"all of it"
        resp.release()


async def test_connection_lost_mid_body_is_broken() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async with Server(script) as pool:
        resp = await pool.post("/", b"{}")
        with pytest.raises(ResponseBroken):
            await resp.read()
        resp.release()


async def test_refused_connection_is_connect_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ConnectFailed):
            await UpstreamPool("127.0.0.1", port).post("/", b"{}")


async def test_early_release_closes_the_connection_so_the_engine_sees_it() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()  # wait for the client to hang up

    server = Server(script)
    async with server as pool:
        resp = await pool.post("/", b"{}")
        async for _ in resp.chunks():
            break
        resp.release()
        await asyncio.wait_for(server.closed.wait(), 10)


async def test_a_fast_stream_pauses_reading_until_consumed(monkeypatch: pytest.MonkeyPatch) -> None:
    block = b"x" * 65536
    paused = asyncio.Event()
    original = upstream.Connection.pause

    def pause(self: upstream.Connection) -> None:
        original(self)
        paused.set()

    monkeypatch.setattr(upstream.Connection, "pause", pause)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(32):  # 2 MiB, far above the high-water mark
            writer.write(b"%x\r\n%s\r\n" % (len(block), block))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with Server(script) as pool:
        resp = await pool.post("/", b"{}")
        chunks: AsyncIterator[bytes] = resp.chunks()
        total = len(await anext(chunks))
        conn = resp._conn
        await asyncio.wait_for(paused.wait(), 10)  # reading stops instead of buffering the whole stream
        assert conn._paused
        async for chunk in chunks:
            total += len(chunk)
        assert total == 32 * len(block) and not conn._paused
        resp.release()


async def test_silent_engine_times_out_and_learns_the_client_left() -> None:
    """Issue 13 item 4: no byte for the pool's idle timeout raises IdleTimeout and closes the connection;
    a byte in time restarts the clock; every request carries an X-Request-Id."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()  # then silence, until the client hangs up

    server = Server(script)
    async with server as pool:
        pool.idle_timeout_s = 0.2
        resp = await pool.post("/", b"{}")
        got = []
        with pytest.raises(IdleTimeout, match=r"sent nothing for 0\.2 s"):
            async for chunk in resp.chunks():
                got.append(chunk)
        assert got == [b"hello"] and not resp.complete
        resp.release()
        await asyncio.wait_for(server.closed.wait(), 10)  # the engine saw its client go
    assert f"X-Request-Id: {resp.request_id}\r\n".encode() in server.requests[0] and len(resp.request_id) == 16


async def test_silent_engine_before_the_headers_times_out() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a whole answer still being computed: not a byte yet

    async with Server(script) as pool:
        pool.idle_timeout_s = 0.2
        with pytest.raises(IdleTimeout):
            await pool.post("/", b"{}")


async def test_a_complete_response_is_complete_and_an_aborted_one_is_not() -> None:
    async with Server(reply(b"{}")) as pool:
        resp = await pool.post("/", b"{}")
        await resp.read()
        assert resp.complete
        resp.release()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()

    async with Server(script) as pool:
        resp = await pool.post("/", b"{}")
        resp.abort()  # a preemption: the engine was still sending
        assert not resp.complete
        resp.release()
