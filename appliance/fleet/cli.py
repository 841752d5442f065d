"""`appliance fleet join|leave|status`: this box into a fleet behind `appliance router`, out of it, and
how the registry sees it (docs/fleet.md, "Joining and leaving").

The edge of the fleet commands: it reads the environment (vast.ai's `PUBLIC_IPADDR` and
`VAST_TCP_PORT_<port>`, `APPLIANCE_JOIN_TOKEN`), finds this host's address toward the router, talks to
the router (join), the running daemon (drain, through daemon_client) and the shared store (register,
deregister), writes the configuration file and the token file, and restarts the installed service
when `appliance service` knows how. Errors are one `error:` line and a non-zero exit status: 2 for
what the user must change (configuration, advertised URL), 1 for what did not answer.
It must not hold the join's rules (`fleet.join`, `fleet.advertise`) nor the daemon's fleet logic.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import typer

from ..cli_config import ConfigOpt, installed, load_or_exit, resolve_config_path
from ..config import Config, ConfigError, parse_config
from ..daemon_client import DaemonError, DaemonUnreachable, find_daemon, request_json
from . import API_VERSION
from .advertise import AdvertiseError, advertise_url
from .identity import box_id
from .join import JoinError, edit_config, join_changes, leave_changes, parse_answer, request_join, write_atomically
from .token import token_path, write_token

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Join this box to a fleet behind `appliance router`, leave it, or show its registry row.")

DRAIN_POLL_S = 0.5


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _config_at(explicit: Path | None) -> tuple[Path, Config]:
    try:
        path = resolve_config_path(explicit)
    except ConfigError as exc:
        _fail("; ".join(exc.lines), 2)
    return path, load_or_exit(path)


def _box_id(cfg: Config) -> str:
    try:
        return box_id(cfg, cfg.state_path())
    except OSError as exc:
        _fail(f"server.state_dir: cannot keep the box's id in {cfg.state_path()} ({exc.strerror or exc})", 2)


def _local_address(router: str) -> str | None:
    """The address this host uses toward the router (a UDP socket's choice: no packet is sent)."""
    host = urlsplit(router).hostname
    if not host:
        return None
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return str(s.getsockname()[0])
    except OSError:
        return None


def _prepare(path: Path, changes: dict[str, dict[str, Any]]) -> tuple[str, Config]:
    """The configuration file's text with `changes`, and what it loads as; exits 2 (nothing written) if invalid."""
    try:
        new_text = edit_config(path.read_text(encoding="utf-8"), changes)
        new = parse_config(tomllib.loads(new_text), source=str(path), state_dir=os.environ.get("APPLIANCE_STATE_DIR"))
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror or exc}", 2)
    except JoinError as exc:
        _fail(f"{path}: {exc}", 2)
    except ConfigError as exc:
        _fail(f"the configuration would not be valid, nothing was written: {'; '.join(exc.lines)}", 2)
    return new_text, new


def _write(path: Path, text: str) -> None:
    try:
        write_atomically(path, text)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}", 2)


def _restart(no_restart: bool, why: str) -> None:
    receipt = installed()
    if no_restart or receipt is None or not receipt.manager:
        how = "`appliance service restart`" if receipt is not None and receipt.manager else \
            "stop `appliance serve` and start it again"
        typer.echo(f"restart the daemon {why}: {how}")
        return
    from .. import service_cli

    typer.echo(f"restarting the service {why} ({receipt.manager})")
    service_cli.restart()


@app.command()
def join(router: Annotated[str, typer.Argument(help="the router's URL, e.g. https://router.example:8443")],
         token: Annotated[str, typer.Option("--token", envvar="APPLIANCE_JOIN_TOKEN",
                                            help="the router's join token (router.join_token_file)")],
         advertise: Annotated[str, typer.Option("--advertise-url", help="the URL the router reaches this box at "
                                                "(default: fleet.advertise_url, on vast.ai PUBLIC_IPADDR and "
                                                "VAST_TCP_PORT_<server.port>, else server.host:server.port)")] = "",
         cafile: Annotated[Path | None, typer.Option("--cafile", help="a CA certificate to trust for the "
                                                     "router's HTTPS (default: the system's)")] = None,
         no_restart: Annotated[bool, typer.Option("--no-restart", help="do not restart the installed "
                                                  "service")] = False,
         config: ConfigOpt = None) -> None:
    """Join the fleet: ask the router, write its settings and token here, register this box, restart."""
    if not router.startswith(("http://", "https://")):
        _fail(f"URL: must be the router's http(s):// URL, got {router!r}", 2)
    router = router.rstrip("/")
    path, cfg = _config_at(config)
    me = _box_id(cfg)
    try:
        url = advertise_url(scheme="https" if cfg.server.tls_cert else "http", host=cfg.server.host,
                            port=cfg.server.port, env=os.environ, local_address=_local_address(router),
                            explicit=advertise, configured=cfg.fleet.advertise_url)
    except AdvertiseError as exc:
        _fail(str(exc), 2)
    version = __import__("appliance").__version__
    try:
        answer = parse_answer(request_join(router, token, {"box_id": me, "url": url, "version": version,
                                                           "api_version": API_VERSION}, cafile=cafile))
    except JoinError as exc:
        _fail(str(exc), 1)
    text, joined = _prepare(path, join_changes(answer, url, router))
    tokens = token_path(joined)
    try:  # the token first: a configuration with fleet.enabled and no token file would not start
        write_token(tokens, answer.fleet_token)
    except OSError as exc:
        _fail(f"fleet.token_file: cannot write {tokens}: {exc.strerror or exc}", 2)
    _write(path, text)
    typer.echo(f"wrote {path}: store.url, [jobs] ({answer.jobs['backend']}), [fleet] enabled, advertise_url = {url}, "
               f"router_url = {joined.fleet.router_url}")
    typer.echo(f"wrote the fleet token to {tokens} (mode 0600)")
    from ..store import BoxRecord, StoreError, open_store

    try:
        store = open_store(answer.store_url, None)
        try:
            store.put_box(BoxRecord(me, url, version, API_VERSION, "starting",
                                    {"box_id": me, "generation": 0, "models": {}, "free_vram_bytes": 0,
                                     "total_vram_bytes": 0, "state": "starting"}))
        finally:
            store.close()
    except StoreError as exc:
        _fail(f"{exc} (the settings are written: the box registers itself when its daemon starts)", 1)
    typer.echo(f"registered box {me} at {url} in the fleet of {router}")
    if cfg.server.host in ("127.0.0.1", "::1", "localhost") and not advertise:
        typer.echo(f"note: server.host is {cfg.server.host}: the daemon must listen where the router reaches it "
                   "(server.host = \"0.0.0.0\" with TLS, or server.plain_http behind a TLS proxy)")
    _restart(no_restart, "to serve as a fleet box")


def _drain(cfg: Config, timeout_s: float) -> None:
    target = find_daemon(os.environ, cfg, installed())  # APPLIANCE_URL, else this configuration's address
    try:
        progress = request_json(target, "/api/drain", "POST", timeout_s=30)
    except DaemonUnreachable:
        typer.echo("the daemon is not running: nothing to drain")
        return
    except DaemonError as exc:
        _fail(f"cannot drain the daemon: {exc}", 1)
    typer.echo("draining: new requests and jobs go to the other boxes")
    deadline = time.monotonic() + timeout_s
    while not progress.get("drained"):
        if time.monotonic() > deadline:
            left = progress.get("in_flight", {})
            _fail(f"still in flight after {timeout_s:g} s: {left.get('requests', '?')} requests, "
                  f"{left.get('jobs', '?')} jobs; the box stays draining (run `appliance fleet leave` again, "
                  "or pass a longer --timeout)", 1)
        time.sleep(DRAIN_POLL_S)
        try:
            progress = request_json(target, "/api/drain", timeout_s=30)
        except DaemonUnreachable:
            typer.echo("the daemon stopped while draining")
            return
        except DaemonError as exc:
            _fail(f"cannot read the drain's progress: {exc}", 1)
    typer.echo("drained: nothing in flight")


@app.command()
def leave(timeout: Annotated[float, typer.Option("--timeout", min=0, help="seconds to wait for the work in "
                                                 "flight to finish")] = 300.0,
          no_restart: Annotated[bool, typer.Option("--no-restart", help="do not restart the installed "
                                                   "service")] = False,
          config: ConfigOpt = None) -> None:
    """Leave the fleet: drain the daemon, wait for its work in flight, deregister, turn fleet.enabled off."""
    path, cfg = _config_at(config)
    me = _box_id(cfg)
    _drain(cfg, timeout)
    _write(path, _prepare(path, leave_changes())[0])
    typer.echo(f"wrote {path}: fleet.enabled = false")
    _restart(no_restart, "to serve on its own again")
    from ..store_cli import open_configured

    store = open_configured(cfg)
    try:
        store.remove_box(me)  # gone already when the restart stopped the daemon cleanly
    finally:
        store.close()
    typer.echo(f"box {me} is out of the registry of {store.describe()}")


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="print the row as JSON")] = False,
           config: ConfigOpt = None) -> None:
    """This box's row as the registry sees it (exit status 1 when it has none or it expired)."""
    path, cfg = _config_at(config)
    me = _box_id(cfg)
    from ..store_cli import open_configured

    store = open_configured(cfg)
    try:
        rows = {b.box_id: b for b in store.boxes()}
        live = {b.box_id for b in store.boxes(live_within_s=cfg.fleet.expire_s)}
        where = store.describe()
    finally:
        store.close()
    row = rows.get(me)
    if as_json:
        doc = None if row is None else {**row.__dict__, "live": me in live}
        typer.echo(json.dumps({"box_id": me, "fleet_enabled": cfg.fleet.enabled, "registry": where, "row": doc},
                              indent=2))
    elif row is None:
        typer.echo(f"box {me}: not in the registry of {where} (fleet.enabled = "
                   f"{str(cfg.fleet.enabled).lower()} in {path})")
    else:
        typer.echo(f"box {me}: {row.state}, {'live' if me in live else 'expired'} (last heartbeat "
                   f"{_when(row.heartbeat_at)}, fleet.expire_s = {cfg.fleet.expire_s:g} s; joined "
                   f"{_when(row.joined_at)})")
        typer.echo(f"  url {row.url}  version {row.version} (API {row.api_version})  router "
                   f"{cfg.fleet.router_url or '-'}  registry {where}")
        models = row.residency.get("models", {})
        if isinstance(models, dict) and models:
            typer.echo("  models: " + ", ".join(f"{mid} ({m.get('tier', '?') if isinstance(m, dict) else '?'})"
                                               for mid, m in sorted(models.items())))
    if row is None or me not in live:
        raise typer.Exit(1)
