"""Running the daemon: uvicorn serving the app, systemd notification, orderly signals.

uvicorn's own handlers turn SIGTERM/SIGINT into a flag; the lifespan then runs the Appliance's one
ordered shutdown. READY=1 goes to systemd (NOTIFY_SOCKET) once the port listens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from types import FrameType

import uvicorn

from .app import Appliance
from .config import Config
from .gateway.app import build_app
from .gateway.auth import is_loopback

log = logging.getLogger("appliance")


class RefusedBind(Exception):
    pass


def sd_notify(message: str) -> bool:
    """Send a datagram to systemd's NOTIFY_SOCKET; a no-op without one."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        sock.sendall(message.encode())
    return True


class _Server(uvicorn.Server):
    """uvicorn re-raises the signal after its graceful shutdown (the process then dies of SIGTERM);
    the daemon's shutdown is complete at that point, so it exits 0 instead."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


async def _notify_when_listening(server: uvicorn.Server) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    sd_notify("READY=1\nSTATUS=serving")
    log.info("appliance ready on port %s", server.config.port)


async def serve(config: Config, host: str, port: int, has_keys: bool, hub_endpoint: str | None = None,
                hub_token: str | None = None) -> None:
    if not is_loopback(host) and not has_keys:
        raise RefusedBind(
            f"refusing to listen on {host}: no API key exists. Create one first with "
            "`appliance keys create --name admin --admin`, or bind 127.0.0.1."
        )
    appliance = Appliance(config, host=host, port=port, hub_endpoint=hub_endpoint, hub_token=hub_token)
    app = build_app(appliance, usage=appliance.usage)
    uv = uvicorn.Config(app, host=host, port=port, log_level=config.server.log_level, access_log=False,
                        log_config=None,  # uvicorn's lines go through the daemon's handler (logsetup)
                        lifespan="on", loop="none", http="httptools", proxy_headers=False,
                        timeout_graceful_shutdown=int(config.server.shutdown_grace_s) or None)
    server = _Server(uv)
    notifier = asyncio.ensure_future(_notify_when_listening(server))
    try:
        await server.serve()
    finally:
        notifier.cancel()
        sd_notify("STOPPING=1")
