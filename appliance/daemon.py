"""Running the daemon: uvicorn serving the app, systemd notification, orderly signals.

uvicorn's own handlers turn SIGTERM/SIGINT into a flag; the lifespan then runs the Appliance's one
ordered shutdown. READY=1 goes to systemd (NOTIFY_SOCKET) once the port listens, then STATUS and
WATCHDOG from systemd_notify.notify_loop, STOPPING=1 when it stops. A non-loopback bind needs an API
key and TLS (server.tls_cert/tls_key), or server.plain_http behind a TLS-terminating proxy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from types import FrameType

import uvicorn

from .app import Appliance
from .config import Config
from .gateway.app import build_app
from .gateway.auth import is_loopback
from .systemd_notify import answers_health, notify_loop, sd_notify

log = logging.getLogger("appliance")


class RefusedBind(Exception):
    pass


class _Server(uvicorn.Server):
    """uvicorn re-raises the signal after its graceful shutdown (the process then dies of SIGTERM);
    the daemon's shutdown is complete at that point, so it exits 0 instead. The signal also makes the
    Appliance's readiness "stopping" at once, while uvicorn lets the open requests finish."""

    def __init__(self, config: uvicorn.Config, appliance: Appliance) -> None:
        super().__init__(config)
        self.appliance = appliance

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.appliance.stopping()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


async def _notify_when_listening(server: uvicorn.Server, appliance: Appliance, self_host: str, tls: bool) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    sd_notify("READY=1\nSTATUS=serving")
    log.info("appliance ready on %s://%s:%s", "https" if server.config.ssl_certfile else "http",
             server.config.host, server.config.port)
    await notify_loop(lambda: [{"name": e.name, "state": e.state.value} for e in appliance.engines.values()],
                      lambda: answers_health(self_host, server.config.port, tls), os.environ)


def _tls_file(path: str) -> str | None:
    return os.path.expanduser(path) if path else None


async def serve(config: Config, host: str, port: int, has_keys: bool, hub_endpoint: str | None = None,
                hub_token: str | None = None) -> None:
    if not is_loopback(host) and not has_keys:
        raise RefusedBind(
            f"refusing to listen on {host}: no API key exists. Create one first with "
            "`appliance keys create --name admin --admin`, or bind 127.0.0.1."
        )
    tls = config.server.tls_cert
    if not is_loopback(host) and not tls and not config.server.plain_http:
        raise RefusedBind(
            f"refusing to serve plain HTTP on {host}: keys would cross the network in clear text. Set "
            "server.tls_cert and server.tls_key, or server.plain_http = true behind a TLS-terminating proxy."
        )
    if config.fleet.enabled and not config.fleet.advertise_url and host in ("0.0.0.0", "::"):
        raise RefusedBind(f"fleet.advertise_url: required in {config.source} when the daemon binds {host} (the URL "
                          "the router reaches this box at; `appliance fleet join` writes it)")
    appliance = Appliance(config, host=host, port=port, hub_endpoint=hub_endpoint, hub_token=hub_token)
    app = build_app(appliance, usage=appliance.usage)
    uv = uvicorn.Config(app, host=host, port=port, log_level=config.server.log_level, access_log=False,
                        log_config=None,  # uvicorn's lines go through the daemon's handler (logsetup)
                        lifespan="on", loop="none", http="httptools", proxy_headers=False,
                        timeout_graceful_shutdown=int(config.server.shutdown_grace_s) or None,
                        ssl_certfile=_tls_file(config.server.tls_cert), ssl_keyfile=_tls_file(config.server.tls_key))
    server = _Server(uv, appliance)
    if uv.ssl_certfile and uv.ssl_keyfile:
        uv.load()  # builds the SSL context now, so the renewal below reloads the one that serves
        from .tls import CertificateKeeper

        keeper = CertificateKeeper(Path(uv.ssl_certfile), Path(str(uv.ssl_keyfile)), uv.ssl)
        appliance.maintenance.add_daily("tls-renewal", lambda now: keeper.check(now))
    sd_notify("STATUS=starting")
    self_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    notifier = asyncio.ensure_future(_notify_when_listening(server, appliance, self_host, bool(tls)))
    try:
        await server.serve()
    finally:
        notifier.cancel()
        sd_notify("STOPPING=1")
