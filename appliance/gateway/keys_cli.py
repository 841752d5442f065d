"""`appliance keys create|import|list|revoke`: manage API keys in the appliance's store (`store.url`).

The key is printed once, at creation; only its hash is stored. A running daemon notices new and
revoked keys within about a second (gateway.auth). The configuration is resolved like every other
command (`--config`, `APPLIANCE_CONFIG`, `APPLIANCE_STATE_DIR`) through `appliance.cli_config`, which
imports no command module, so this module and `appliance.cli` import without a cycle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..cli_config import obtain_config
from ..store_cli import open_configured
from .keys import KeyStore

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Create, list and revoke API keys.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="config file (default: as for serve)")]


def _store(config: Path | None) -> KeyStore:
    return KeyStore(open_configured(obtain_config(config)))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@app.command()
def create(name: Annotated[str, typer.Option("--name", "-n", help="who or what the key is for")],
           admin: Annotated[bool, typer.Option("--admin", help="may use the /api control routes")] = False,
           config: ConfigOpt = None) -> None:
    """Create a key and print it (the only time it is shown)."""
    store = _store(config)
    try:
        key, secret = store.create(name, admin=admin)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)
    typer.echo(f"created key {key.id} ({key.name}{', admin' if key.admin else ''}); store it now: "
               "it cannot be shown again", err=True)


@app.command("import")
def import_token(name: Annotated[str, typer.Option("--name", "-n", help="who or what the token is for")],
                 from_env: Annotated[str, typer.Option("--from-env", help="the environment variable holding the "
                                                       "token, e.g. OPEN_BUTTON_TOKEN on vast.ai")],
                 admin: Annotated[bool, typer.Option("--admin", help="may use the /api control routes")] = False,
                 config: ConfigOpt = None) -> None:
    """Accept a token chosen elsewhere as a key (vast.ai's portal forwards its own token unchanged)."""
    import os

    token = os.environ.get(from_env, "").strip()
    if not token:
        typer.echo(f"error: --from-env: {from_env} is not set or empty", err=True)
        raise typer.Exit(2)
    try:
        key = _store(config).import_token(name, token, admin=admin)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"imported the token in ${from_env} as key {key.id} ({key.name}{', admin' if key.admin else ''})")


@app.command("list")
def list_keys(config: ConfigOpt = None) -> None:
    """List keys (ids and names; never the secrets)."""
    keys = _store(config).list()
    if not keys:
        typer.echo("no keys: the API is open on loopback only (create one with `appliance keys create`)")
        return
    typer.echo(f"{'ID':<10} {'NAME':<24} {'SCOPE':<6} {'CREATED':<17} REVOKED")
    for k in keys:
        typer.echo(f"{k.id:<10} {k.name:<24} {'admin' if k.admin else 'api':<6} {_when(k.created):<17} "
                   f"{_when(k.revoked)}")


@app.command()
def revoke(id_or_name: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="key id or name")],
           config: ConfigOpt = None) -> None:
    """Revoke a key by id, or every live key with that name."""
    count = _store(config).revoke(id_or_name)
    if count == 0:
        typer.echo(f"error: no live key with id or name {id_or_name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {count} key{'s' if count != 1 else ''}")
