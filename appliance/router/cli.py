"""`appliance router` (run the router in the foreground), `appliance router upgrade-drain BOX`
(drain one box through a running router, for a rolling upgrade) and `appliance router tokens` (make
the join and fleet tokens before the first start, as install.sh --router does; prints their files,
never the tokens). The CLI edge: reads the config
and APPLIANCE_API_KEY, prints one line per problem.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Annotated

import typer

from ..cli_config import ConfigOpt, obtain_config

app = typer.Typer(add_completion=False, invoke_without_command=True,
                  help="Run the fleet's router (HAProxy fed from the registry); see docs/fleet.md.")
DRAIN_DEADLINE_S = 30.0


@app.callback()
def router(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Run the router in the foreground: HAProxy on router.host:router.port, the API on 127.0.0.1:router.api_port."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = obtain_config(config)
    from ..logsetup import configure as configure_logging
    from .main import run_router
    from .process import HaproxyError

    configure_logging(cfg.server.log_level, cfg.server.log_format, sys.stderr)
    ca = cfg.router.box_ca_file
    if ca and not os.access(ca, os.R_OK):
        typer.echo(f"error: {cfg.source}: router.box_ca_file: cannot read {ca}", err=True)
        raise typer.Exit(2)
    try:
        asyncio.run(run_router(cfg))
    except HaproxyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


@app.command("upgrade-drain")
def upgrade_drain(box_id: Annotated[str, typer.Argument(help="the box to drain (its id in `GET /api/fleet`)")],
                  config: ConfigOpt = None) -> None:
    """Drain one box through the local router (APPLIANCE_API_KEY: an admin key): no new work goes to
    it, its in-flight work finishes; then upgrade and restart it, and drain the next one."""
    cfg = obtain_config(config)
    key = os.environ.get("APPLIANCE_API_KEY", "")
    if not key:
        typer.echo("error: set APPLIANCE_API_KEY to an admin key of the fleet", err=True)
        raise typer.Exit(2)
    url = f"http://127.0.0.1:{cfg.router.api_port}/api/fleet/boxes/{box_id}/drain"
    req = urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=DRAIN_DEADLINE_S) as reply:
            typer.echo(json.dumps(json.loads(reply.read()), indent=1))
    except urllib.error.HTTPError as exc:
        typer.echo(f"error: {exc.code}: {exc.read().decode(errors='replace')[:300]}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: router API at {url}: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("tokens")
def tokens(config: ConfigOpt = None) -> None:
    """Create the join token (router.join_token_file) and the fleet token (fleet.token_file) when missing,
    mode 0600, and print where they are (the tokens themselves are not printed)."""
    cfg = obtain_config(config)
    from ..fleet.token import token_path as fleet_token_path
    from .tokens import join_token_path, read_or_create

    for label, path in (("join token", join_token_path(cfg)), ("fleet token", fleet_token_path(cfg))):
        try:
            read_or_create(path)
        except OSError as exc:
            typer.echo(f"error: {label} file {path}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{label}: {path}")
