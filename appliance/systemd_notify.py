"""The daemon's side of systemd's notification protocol (sd_notify(3), sd_watchdog_enabled(3)).

Messages go as datagrams to `$NOTIFY_SOCKET` (a leading `@` names an abstract socket): `READY=1` once the
port listens (never after models load: TimeoutStartSec would kill a slow start), `STATUS=...` whenever the
engines' states change (so `systemctl status` shows engines starting), `WATCHDOG=1` every half of
`$WATCHDOG_USEC` but only after the daemon answered its own `/health` over its own socket (a loop that
proves health, not a timer that proves the process exists), and `STOPPING=1` when shutdown begins.

It owns the wire format and the watchdog loop; it must not decide readiness (daemon.py calls `ready()`),
and every function is a no-op without a socket, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger("appliance")


def sd_notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one datagram to systemd's NOTIFY_SOCKET; False (and nothing sent) without one."""
    addr = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        sock.sendall(message.encode())
    return True


def watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Half the watchdog period systemd asks for, or None when the watchdog is off or meant for another pid."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def engines_line(engines: list[dict[str, object]]) -> str:
    """`STATUS=` text: the engines' states, e.g. `serving; engines: vllm starting, tts running`."""
    if not engines:
        return "serving; no engines configured"
    return "serving; engines: " + ", ".join(f"{e['name']} {e['state']}" for e in engines)


async def answers_health(host: str, port: int, tls: bool, timeout_s: float = 5.0) -> bool:
    """GET /health over the daemon's own socket (TLS unverified: this checks liveness, not identity)."""
    ctx: ssl.SSLContext | None = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            try:
                writer.write(b"GET /health HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n")
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    return status_line.split(b" ")[1:2] == [b"200"]


async def notify_loop(status: Callable[[], list[dict[str, object]]], healthy: Callable[[], Awaitable[bool]],
                      env: Mapping[str, str], poll_s: float = 2.0) -> None:
    """Until cancelled: STATUS on every change of the engines' states, WATCHDOG=1 after each healthy check."""
    if not env.get("NOTIFY_SOCKET"):
        return
    watchdog = watchdog_interval_s(env)
    interval = min(poll_s, watchdog) if watchdog else poll_s
    last = ""
    while True:
        line = engines_line(status())
        if line != last:
            sd_notify(f"STATUS={line}", env)
            last = line
        if watchdog is not None:
            if await healthy():
                sd_notify("WATCHDOG=1", env)
            else:
                log.warning("watchdog: /health did not answer; not petting the watchdog")
        await asyncio.sleep(interval)
