"""Where the command line finds its configuration, shared by every command module.

Owns: the search order (`--config`, else `$APPLIANCE_CONFIG`, else the installed configuration named by
install.sh's receipt, else `~/.config/appliance/config.toml`, `/etc/appliance/config.toml`,
`./config.toml`: a checkout's example configuration must not silently replace the one the service runs
with), the `$APPLIANCE_STATE_DIR` override, and turning a `ConfigError` into one `error:` line per
problem and exit status 2.

Must not: import a command module (`appliance.cli`, `catalog_cli`, `gateway.keys_cli`): they import
this one, which is what keeps the command modules free of import cycles.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .config import Config, ConfigError, load_config
from .daemon_client import DaemonTarget, find_daemon
from .install_receipt import Receipt, ReceiptError, load_receipt

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="config file (default: $APPLIANCE_CONFIG, "
                                                "the installed one, ~/.config/appliance/config.toml, "
                                                "/etc/appliance/config.toml, ./config.toml)")]

SEARCH = (Path("~/.config/appliance/config.toml"), Path("/etc/appliance/config.toml"), Path("config.toml"))


def installed() -> Receipt | None:
    """The receipt of the installation this command belongs to (None in a checkout)."""
    try:
        return load_receipt()
    except ReceiptError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def find_config_path(explicit: Path | None) -> Path | None:
    """The configuration file to use, or None when none was named and none is found."""
    if explicit is not None:
        return explicit
    env = os.environ.get("APPLIANCE_CONFIG")
    if env:
        return Path(env)
    receipt = installed()
    if receipt is not None:
        return receipt.config
    for cand in SEARCH:
        if cand.expanduser().is_file():
            return cand.expanduser()
    return None


def resolve_config_path(explicit: Path | None) -> Path:
    path = find_config_path(explicit)
    if path is None:
        raise ConfigError(["no configuration file found: pass --config PATH or set APPLIANCE_CONFIG "
                           f"(looked for {', '.join(str(p) for p in SEARCH)})"])
    return path


def load_or_exit(path: Path) -> Config:
    """The configuration in `path`; a bad file prints one line per problem and exits 2."""
    try:
        return load_config(path, state_dir=os.environ.get("APPLIANCE_STATE_DIR"))
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None


def obtain_config(explicit: Path | None) -> Config:
    """The configuration a command runs with; none found, or a bad one, exits 2 with the reason."""
    try:
        path = resolve_config_path(explicit)
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    return load_or_exit(path)


def daemon_target() -> DaemonTarget:
    """The running daemon as configured: APPLIANCE_URL, else the resolved configuration's host and port."""
    try:
        cfg: Config | None = load_config(resolve_config_path(None), state_dir=os.environ.get("APPLIANCE_STATE_DIR"))
    except ConfigError:
        cfg = None  # no configuration here: the default address, unless APPLIANCE_URL says otherwise
    return find_daemon(os.environ, cfg, installed())
