"""`appliance engine install NAME`: the CLI edge of engine_install (the environment, paths, messages).

appliance/cli.py's `engine` command hands `install` here. It reads the install receipt for the engines'
root (<code>/engines), prints one line per step, and maps failures to exit 1; the steps themselves are
engine_install's.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .engine_install import ENGINES, EngineInstallError, gpu_count, install_engine, source_root
from .install_receipt import Receipt


def default_root(receipt: Receipt | None) -> Path:
    return (receipt.prefix if receipt else Path("~/.local/lib/appliance").expanduser()) / "engines"


def install_command(name: str, root: Path | None, source: Path | None, receipt: Receipt | None) -> None:
    if name not in ENGINES:
        typer.echo(f"error: engine: unknown engine {name!r} to install (one of {', '.join(ENGINES)})", err=True)
        raise typer.Exit(2)
    where = (root or default_root(receipt)).expanduser()
    try:
        record = install_engine(name, where, source or source_root(), dict(os.environ), gpus=gpu_count()
                                if os.environ.get("APPLIANCE_GPU") is None else int(os.environ["APPLIANCE_GPU"]))
    except EngineInstallError as exc:
        typer.echo(f"error: {name}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name} {record['version']} installed in {where / name} (interpreter {record['python']}); "
               "`appliance plan --write --engines-root " + str(where) + "` configures it on a new configuration")
