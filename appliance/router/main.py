"""Running the router: tokens, HAProxy, the sync loop and the API app, with one ordered shutdown.

Start: the fleet and join tokens (created on first start), the sync service starts HAProxy from the
last plan, then the sync loop, HAProxy's watcher and the API server run side by side. SIGTERM/SIGINT
only set a flag; shutdown then stops the API server, the sync loop, HAProxy, and closes the store.
Under systemd (install.sh --router uses the daemon's unit, Type=notify with a watchdog) it says
READY=1 once HAProxy and the API answer, WATCHDOG=1 only after its own `GET /health` answered
(HAProxy running), and STOPPING=1 at shutdown; outside systemd these are no-ops (systemd_notify.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import uvicorn

from ..config import Config
from ..fleet.token import token_path as fleet_token_path
from ..store import Store, open_store
from ..systemd_notify import answers_health, notify_loop, sd_notify
from .api import RouterApi, build_app
from .haproxy_config import Paths
from .process import HaproxyProcess
from .service import RouterService
from .tokens import join_token_path, read_or_create

log = logging.getLogger("appliance.router")


def router_paths(cfg: Config) -> Paths:
    return Paths(cfg.state_path() / "router")


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the router's own handlers own the signals
        pass


async def run_router(cfg: Config) -> None:
    paths = router_paths(cfg)
    fleet_token = read_or_create(fleet_token_path(cfg))
    join_token = read_or_create(join_token_path(cfg))
    log.info("join token in %s, fleet token in %s", join_token_path(cfg), fleet_token_path(cfg))

    def opener() -> Store:
        return open_store(cfg.store.url, cfg.state_path())

    haproxy = HaproxyProcess(cfg.router.haproxy_bin, paths, fleet_token)
    service = RouterService(cfg, paths, haproxy, opener)
    api = RouterApi(service, fleet_token, join_token, paths.root / "admin.key")
    server = _Server(uvicorn.Config(build_app(api), host="127.0.0.1", port=cfg.router.api_port,
                                    log_level="warning", access_log=False, lifespan="off", log_config=None))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    tasks = [asyncio.create_task(service.run(), name="router-sync"),
             asyncio.create_task(haproxy.watch(), name="haproxy-watch"),
             asyncio.create_task(server.serve(), name="router-api")]
    stopper = asyncio.create_task(stop.wait())
    notifier = asyncio.create_task(_notify(server, haproxy, cfg.router.api_port), name="systemd-notify")
    log.info("router listening on %s:%d (API on 127.0.0.1:%d)", cfg.router.host, cfg.router.port,
             cfg.router.api_port)
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("%s failed: %s", task.get_name(), task.exception())
    finally:
        sd_notify("STOPPING=1")
        server.should_exit = True
        await service.stop()
        for task in (*tasks, stopper, notifier):
            task.cancel()
        for task in (*tasks, notifier):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _notify(server: uvicorn.Server, haproxy: HaproxyProcess, api_port: int) -> None:
    """READY=1 once the API listens (HAProxy already answered its socket), then the watchdog loop."""
    for _ in range(600):  # uvicorn binds within a moment; a bind that fails ends run_router instead
        if server.started:
            break
        await asyncio.sleep(0.05)
    else:
        return
    sd_notify("READY=1\nSTATUS=routing")
    await notify_loop(lambda: [{"name": "haproxy", "state": "running" if haproxy.running else "restarting"}],
                      lambda: answers_health("127.0.0.1", api_port, False), os.environ)
