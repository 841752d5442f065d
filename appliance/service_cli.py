"""`appliance service status|start|stop|restart|logs`: one way to manage the service, whichever manager runs it.

The install receipt says which manager install.sh registered the daemon with:
- systemd: `systemctl ACTION appliance`, logs from `journalctl -u appliance`;
- supervisord (standalone, its own configuration under the data directory): `supervisorctl -c CONF ACTION
  appliance`; `start` first starts that supervisord when it is not running (after a reboot); logs are its
  daemon.log;
- supervisord-confd (a program in a running supervisord's conf.d, as on vast.ai): `supervisorctl -c CONF
  ACTION appliance`; the program logs to supervisord's stdout (vast.ai copies it to
  /var/log/portal/appliance.log).
`commands_for` is the pure part (receipt and action in, commands out); `app` runs them and passes their
exit status on. It must not edit service files (install.sh owns them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from .install_receipt import Receipt, load_receipt

ACTIONS = ("status", "start", "stop", "restart", "logs")
PORTAL_LOG = Path("/var/log/portal/appliance.log")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Manage the installed service (systemctl or supervisorctl underneath).")


class NotInstalled(Exception):
    pass


def commands_for(receipt: Receipt, action: str, bin_dir: Path, lines: int = 100, follow: bool = False,
                 supervisord_running: bool = True) -> list[list[str]]:
    """The commands that carry out `action` for this installation, in order."""
    if action not in ACTIONS:
        raise ValueError(f"action: must be one of {', '.join(ACTIONS)}, got {action!r}")
    if not receipt.manager:
        raise NotInstalled(f"{receipt.path}: installed with --no-start, no service is registered "
                           "(run install.sh again without --no-start)")
    if receipt.manager == "systemd":
        if action == "logs":
            return [["journalctl", "-u", receipt.unit, "-n", str(lines), "--no-pager", *(["-f"] if follow else [])]]
        return [["systemctl", action, *(["--no-pager"] if action == "status" else []), receipt.unit]]
    if receipt.supervisord_conf is None:
        raise NotInstalled(f"{receipt.path}: supervisord_conf: required for manager {receipt.manager!r}")
    ctl = [str(bin_dir / "supervisorctl"), "-c", str(receipt.supervisord_conf)]
    if action == "logs":
        log = receipt.state_dir / "logs" / "daemon.log" if receipt.manager == "supervisord" else PORTAL_LOG
        return [["tail", "-n", str(lines), *(["-f"] if follow else []), str(log)]]
    if receipt.manager == "supervisord" and not supervisord_running:
        if action in ("start", "restart"):
            # after a reboot nothing runs the standalone supervisord; it starts the appliance (autostart)
            return [[str(bin_dir / "supervisord"), "-c", str(receipt.supervisord_conf)]]
        if action == "stop":
            return []
    return [[*ctl, action, receipt.program]]


def _supervisord_running(receipt: Receipt, bin_dir: Path) -> bool:
    if receipt.manager != "supervisord" or receipt.supervisord_conf is None:
        return True
    done = subprocess.run([str(bin_dir / "supervisorctl"), "-c", str(receipt.supervisord_conf), "pid"],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.returncode == 0 and done.stdout.strip().isdigit()


def _run(action: str, lines: int = 100, follow: bool = False) -> None:
    receipt = load_receipt()
    if receipt is None:
        typer.echo(f"error: this appliance was not installed by install.sh (no receipt in {sys.prefix}); "
                   "in a checkout run `appliance serve`", err=True)
        raise typer.Exit(2)
    bin_dir = Path(sys.prefix) / "bin"
    try:
        commands = commands_for(receipt, action, bin_dir, lines, follow, _supervisord_running(receipt, bin_dir))
    except NotInstalled as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if action == "logs" and receipt.manager == "supervisord-confd" and not PORTAL_LOG.exists():
        typer.echo(f"the appliance logs to the stdout of the supervisord that runs it ({receipt.supervisord_conf})")
        return
    if not commands:
        typer.echo("not running")
    for argv in commands:
        code = subprocess.run(argv, check=False).returncode
        if code != 0:
            raise typer.Exit(code)


@app.command()
def status() -> None:
    """Is the service running (the manager's view; `appliance status` asks the daemon itself)."""
    _run("status")


@app.command()
def start() -> None:
    """Start the service."""
    _run("start")


@app.command()
def stop() -> None:
    """Stop the service (the daemon drains streams and stops its engines first)."""
    _run("stop")


@app.command()
def restart() -> None:
    """Restart the service."""
    _run("restart")


@app.command()
def logs(lines: Annotated[int, typer.Option("--lines", "-n", help="lines")] = 100,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing")] = False) -> None:
    """The daemon's log (journalctl, or the file supervisord writes)."""
    _run("logs", lines, follow)
