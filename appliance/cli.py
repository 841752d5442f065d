"""The `appliance` command line (typer). The edge of the program: it reads the environment
(`APPLIANCE_CONFIG`, `APPLIANCE_STATE_DIR`, `APPLIANCE_URL`, `APPLIANCE_API_KEY`), loads the
configuration once, and turns errors into one clear line and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import doctor, service_cli
from .config import Config, ConfigError, load_config
from .daemon_client import DaemonError, DaemonTarget, DaemonUnreachable, find_daemon, request_json
from .install_receipt import Receipt, ReceiptError, load_receipt

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="AI Appliance: one GPU box, every model, one OpenAI-compatible API.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="config file (default: $APPLIANCE_CONFIG, "
                                                "the installed one, ~/.config/appliance/config.toml, "
                                                "/etc/appliance/config.toml, ./config.toml)")]

# The installed configuration (install.sh's receipt) comes before ./config.toml: a checkout's example
# configuration must not silently replace the one the service runs with.
SEARCH = (Path("~/.config/appliance/config.toml"), Path("/etc/appliance/config.toml"), Path("config.toml"))


def resolve_config_path(explicit: Path | None) -> Path:
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
    raise ConfigError(["no configuration file found: pass --config PATH or set APPLIANCE_CONFIG "
                       f"(looked for {', '.join(str(p) for p in SEARCH)})"])


def installed() -> Receipt | None:
    """The receipt of the installation this command belongs to (None in a checkout)."""
    try:
        return load_receipt()
    except ReceiptError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def obtain_config(explicit: Path | None) -> Config:
    try:
        return load_config(resolve_config_path(explicit), state_dir=os.environ.get("APPLIANCE_STATE_DIR"))
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(path: Annotated[Path | None, typer.Argument(help="config file to check")] = None,
                 config: ConfigOpt = None) -> None:
    """Validate a configuration file; exit non-zero with one line per problem."""
    cfg = obtain_config(path or config)
    typer.echo(f"{cfg.source}: ok (profile {cfg.profile}, {len(cfg.engines)} engines, {len(cfg.models)} models)")


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str | None, typer.Option(help="bind address (default: server.host)")] = None,
          port: Annotated[int | None, typer.Option(help="port (default: server.port)")] = None) -> None:
    """Run the daemon in the foreground."""
    cfg = obtain_config(config)
    typer.echo(f"configuration: {cfg.source}", err=True)
    logging.basicConfig(level=cfg.server.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .daemon import RefusedBind
    from .daemon import serve as run_daemon
    from .gateway.keys import KeyStore

    bind_host = host or cfg.server.host
    bind_port = port or cfg.server.port
    has_keys = KeyStore(cfg.state_path() / "data" / "keys.db").has_active()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(run_daemon(cfg, bind_host, bind_port, has_keys, os.environ.get("HF_ENDPOINT"),
                               os.environ.get("HF_TOKEN")))
    except RefusedBind as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


def daemon_target() -> DaemonTarget:
    """The running daemon as configured: APPLIANCE_URL, else the resolved configuration's host and port."""
    try:
        cfg: Config | None = load_config(resolve_config_path(None), state_dir=os.environ.get("APPLIANCE_STATE_DIR"))
    except ConfigError:
        cfg = None  # no configuration here: the default address, unless APPLIANCE_URL says otherwise
    return find_daemon(os.environ, cfg, installed())


def _api(path: str, method: str = "GET") -> Any:
    try:
        return request_json(daemon_target(), path, method)
    except DaemonError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except DaemonUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 30):.1f}G"


@app.command()
def calibration(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the TOML here (default: print it)")] = None,
    llm: Annotated[str | None, typer.Option(help="the text model standing for the simulator's LLM")] = None,
    image: Annotated[str | None, typer.Option(help="the image model standing for its image model")] = None,
    speech: Annotated[str | None, typer.Option(help="the speech model standing for its XTTS")] = None,
) -> None:
    """Write the scheduler benchmark's calibration from what the running daemon measured
    (footprints, transition times, service times): `python bench/scheduler.py --calibration FILE`."""
    import socket
    import time

    from .calibrate import measure, pick_roles, render_toml

    status_doc = _api("/api/status")
    records = _api("/api/usage?recent=10000").get("recent", [])
    try:
        roles = pick_roles(status_doc, records, {"llm": llm, "image": image, "speech": speech})
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    measured = measure(status_doc, records, roles)
    gpu = status_doc.get("gpu", {})
    header = [
        f"Calibration measured by the appliance on {socket.gethostname()} ({gpu.get('name') or 'no GPU'}), "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, from {len(records)} requests.",
        "Roles: " + ", ".join(f"{role} = {mid}" for role, mid in roles.items()) + ".",
        "python bench/scheduler.py --calibration THIS_FILE",
    ]
    text = render_toml(measured, header)
    if out is None:
        typer.echo(text, nl=False)
        return
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    typer.echo(f"wrote {out} ({len(measured.missing)} figures left at the simulator's defaults)")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False) -> None:
    """Show the daemon's GPU and engines (from GET /api/status)."""
    data = _api("/api/status")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    gpu = data["gpu"]
    console = Console()
    console.print(f"[bold]appliance[/] {data['version']}  profile {data['profile']}  up {data['uptime_s']:.0f}s  "
                  f"config {data.get('config', '-')}", highlight=False)
    console.print(f"GPU ({gpu['kind']}): {gpu.get('name') or '-'}  used {_gb(gpu['used_bytes'])} of "
                  f"{_gb(gpu['total_bytes'])}" + (f"  [yellow]{gpu['note']}[/]" if gpu.get("note") else ""))
    table = Table("engine", "kind", "state", "pid", "port", "restarts", "GPU mem", "models", "last error")
    for e in data["engines"]:
        table.add_row(e["name"], e["kind"], e["state"], str(e["pid"] or "-"), str(e["port"]), str(e["restarts"]),
                      _gb(e["memory_bytes"]), ", ".join(e["models"]), e["last_error"] or "")
    console.print(table)


@app.command()
def logs(engine: str, tail: Annotated[int, typer.Option(help="lines")] = 100) -> None:
    """Print an engine's recent output."""
    data = _api(f"/api/engines/{engine}/logs?tail={tail}")
    for line in data["lines"]:
        typer.echo(line)


@app.command()
def engine(name: Annotated[str, typer.Argument(help="an engine of the configuration, or `install`")],
           action: Annotated[str, typer.Argument(help="start, stop or restart (after install: vllm, comfyui, "
                                                 "xtts or openwebui)")],
           root: Annotated[Path | None, typer.Option(help="install: the engines' directory")] = None,
           source: Annotated[Path | None, typer.Option(help="install: the appliance checkout")] = None) -> None:
    """Start, stop or restart an engine through the running daemon; `engine install NAME` installs one."""
    if name == "install":
        from .engine_cli import install_command

        install_command(action, root, source, installed())
        return
    data = _api(f"/api/engines/{name}/{action}", method="POST")
    typer.echo(f"{data['name']}: {data['state']}")


def _register_optional() -> None:
    """Commands whose modules are owned by other parts (catalog, keys)."""
    try:
        from . import catalog_cli  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        app.command("models")(catalog_cli.models_command)
        app.command("pull")(catalog_cli.pull_command)
        app.command("plan")(catalog_cli.plan_command)
    try:
        from .gateway import keys_cli  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        app.add_typer(keys_cli.app, name="keys")


_register_optional()
app.add_typer(service_cli.app, name="service")
app.command("doctor")(doctor.doctor_command)


def main() -> None:
    app()
