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
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from . import catalog_cli, doctor, service_cli, store_cli, vectors_cli
from .cli_config import ConfigOpt, daemon_target, installed, obtain_config
from .daemon_client import DaemonError, DaemonUnreachable, request_json
from .fleet import cli as fleet_cli
from .gateway import keys_cli
from .router import cli as router_cli

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="AI Appliance: one GPU box, every model, one OpenAI-compatible API.")


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
    from .logsetup import configure as configure_logging

    configure_logging(cfg.server.log_level, cfg.server.log_format, sys.stderr)
    # Through the log, so that a JSON log stays one object per line.
    logging.getLogger("appliance").info("configuration: %s", cfg.source)
    from .daemon import RefusedBind
    from .daemon import serve as run_daemon
    from .fleet.token import TokenError
    from .gateway.keys import KeyStore
    from .jobs import JobsError
    from .store import StoreError
    from .store_cli import open_configured

    bind_host = host or cfg.server.host
    bind_port = port or cfg.server.port
    store = open_configured(cfg)
    has_keys = KeyStore(store).has_active()
    store.close()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(run_daemon(cfg, bind_host, bind_port, has_keys, os.environ.get("HF_ENDPOINT"),
                               os.environ.get("HF_TOKEN")))
    except (RefusedBind, StoreError, JobsError, TokenError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


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
    since = time.time() - float(status_doc.get("uptime_s", 0))  # the store keeps earlier runs too
    records = _api(f"/api/usage?recent=10000&from={since:.3f}").get("recent", [])
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


def engine_state_text(e: dict[str, Any]) -> str:
    """An engine's state for the status table, saying when a backoff or fatal engine is retried."""
    state = str(e["state"])
    if state not in ("fatal", "backoff"):
        return state
    left = e.get("retry_in_s")
    if left is None:
        return f"{state} (until started by hand)"
    return f"{state} (retry in {left:.0f}s)"


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
        table.add_row(e["name"], e["kind"], engine_state_text(e), str(e["pid"] or "-"), str(e["port"]),
                      str(e["restarts"]), _gb(e["memory_bytes"]), ", ".join(e["models"]), e["last_error"] or "")
    console.print(table)


def fresh_lines(lines: list[str], written: int, seen: int) -> list[str]:
    """Of a tail `lines` ending at line number `written`, those after line number `seen`."""
    return lines[len(lines) - min(len(lines), max(0, written - seen)):]


@app.command()
def logs(engine: Annotated[str | None, typer.Argument(help="an engine (default: every engine)")] = None,
         tail: Annotated[int, typer.Option(help="lines")] = 100,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
         interval: Annotated[float, typer.Option(help="seconds between polls with -f", min=0.1)] = 1.0) -> None:
    """Print engines' recent output (each line tagged [ENGINE] when several are shown); -f follows it.

    The daemon's own lines go to its stderr (the journal under systemd: `journalctl -u appliance -f`)."""
    names = [engine] if engine else [e["name"] for e in _api("/api/status")["engines"]]
    tag = len(names) > 1
    seen: dict[str, int] = {}
    while True:
        for name in names:
            data = _api(f"/api/engines/{name}/logs?tail={tail if name not in seen else 500}")
            written = int(data.get("written", len(data["lines"])))
            for line in fresh_lines(data["lines"], written, seen.get(name, written - len(data["lines"]))):
                typer.echo(f"[{name}] {line}" if tag else line)
            seen[name] = written
        if not follow:
            return
        time.sleep(interval)


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


app.command("models")(catalog_cli.models_command)
app.command("pull")(catalog_cli.pull_command)
app.command("plan")(catalog_cli.plan_command)
app.add_typer(keys_cli.app, name="keys")
app.add_typer(store_cli.app, name="store")
app.add_typer(service_cli.app, name="service")
app.add_typer(vectors_cli.app, name="vectors")
app.add_typer(fleet_cli.app, name="fleet")
app.add_typer(router_cli.app, name="router")
app.command("doctor")(doctor.doctor_command)


def main() -> None:
    app()
