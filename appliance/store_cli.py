"""`appliance store copy|backup|status`: move the embedded store into PostgreSQL, copy it while the
daemon runs, show what a store holds.

`open_configured` is the one way the command line opens the configured store (the key commands and
`serve` use it too): a store that cannot be opened is one `error:` line and exit status 2.
It must not run maintenance or touch a running daemon: it works on the store itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_config import obtain_config
from .config import Config
from .store import StoreError, connect, open_store
from .store.sqlcore import SqlStore
from .store.sqlite import SqliteStore

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Copy, back up and inspect the appliance's store (usage, jobs, keys, state).")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="config file (default: as for serve)")]


def open_configured(cfg: Config) -> SqlStore:
    try:
        return open_store(cfg.store.url, cfg.state_path())
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _config(config: Path | None) -> Config:
    return obtain_config(config)


@app.command()
def copy(to: Annotated[str, typer.Option("--to", help="the target store: postgresql://user@host/db")],
         config: ConfigOpt = None) -> None:
    """Copy every table of the configured store into an empty store at --to (then point store.url at
    it). Stop the daemon first: it keeps writing to the source while it runs."""
    source = open_configured(_config(config))
    try:
        target = open_store(to, None)
    except StoreError as exc:
        source.close()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        for table, columns, rows in source.dump():
            target.load(table, columns, rows)
            typer.echo(f"{table}: {len(rows)} rows")
    except (ValueError, StoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        target.close()
        source.close()
    typer.echo(f"copied {source.describe()} to {target.describe()}; set store.url to use it")


@app.command()
def backup(path: Annotated[Path, typer.Argument(help="the backup file to write (a SQLite database)")],
           config: ConfigOpt = None) -> None:
    """A consistent copy of the embedded store, safe while the daemon runs."""
    store = open_configured(_config(config))
    try:
        if not isinstance(store, SqliteStore):
            typer.echo(f"error: {store.describe()} is not the embedded store; back PostgreSQL up with pg_dump",
                       err=True)
            raise typer.Exit(2)
        store.backup(path)
    finally:
        store.close()
    typer.echo(f"backed up {store.describe()} to {path}")


@app.command()
def status(config: ConfigOpt = None,
           url: Annotated[str | None, typer.Option(help="a store URL instead of the configured one")] = None) -> None:
    """The store's backend, migrations and row counts."""
    if url is not None:
        try:
            store: SqlStore = connect(url)
        except StoreError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    else:
        store = open_configured(_config(config))
    try:
        typer.echo(f"{store.describe()} ({store.backend}): migrations {', '.join(store.migrations()) or 'none'}")
        for table, _, rows in store.dump():
            typer.echo(f"  {table}: {len(rows)} rows")
    finally:
        store.close()
