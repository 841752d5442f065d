"""The install receipt: what install.sh put where, read back by the CLI.

install.sh writes `<venv>/appliance-install.toml` (the environment the `appliance` command runs from),
so the command finds the installation it belongs to without any variable: the configuration file, the
data directory, the admin key file, the certificate the daemon serves, and which service manager runs it
(`systemd`, `supervisord` standalone with its own configuration, or `supervisord-confd`: a program file
dropped into a running supervisord's conf.d). Keys:

    prefix, config, state_dir, key_file, tls_cert, manager, unit, supervisord_conf, program

This module owns reading that file and deciding which daemon the CLI talks to (`daemon_base`). It must
not write the receipt (install.sh does), start anything, or read the environment itself: callers pass
`os.environ` in.
"""

from __future__ import annotations

import ipaddress
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RECEIPT_NAME = "appliance-install.toml"
MANAGERS = ("systemd", "supervisord", "supervisord-confd")


class ReceiptError(Exception):
    pass


@dataclass(frozen=True)
class Receipt:
    path: Path
    prefix: Path
    config: Path
    state_dir: Path
    key_file: Path | None
    tls_cert: Path | None
    manager: str  # one of MANAGERS, or "" (installed with --no-start: no service registered)
    unit: str  # the systemd unit name
    supervisord_conf: Path | None  # the configuration supervisorctl is given (-c)
    program: str  # the supervisord program name


def receipt_path(venv: Path | None = None) -> Path:
    return (venv or Path(sys.prefix)) / RECEIPT_NAME


def parse_receipt(text: str, path: Path) -> Receipt:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ReceiptError(f"{path}: invalid TOML: {exc}") from None

    def text_of(key: str, required: bool = False) -> str:
        value = data.get(key, "")
        if not isinstance(value, str) or (required and not value):
            raise ReceiptError(f"{path}: {key}: must be a non-empty string")
        return value

    def optional_path(key: str) -> Path | None:
        value = text_of(key)
        return Path(value) if value else None

    manager = text_of("manager")
    if manager and manager not in MANAGERS:
        raise ReceiptError(f"{path}: manager: must be one of {', '.join(MANAGERS)} or empty, got {manager!r}")
    return Receipt(path=path, prefix=Path(text_of("prefix", True)), config=Path(text_of("config", True)),
                   state_dir=Path(text_of("state_dir", True)), key_file=optional_path("key_file"),
                   tls_cert=optional_path("tls_cert"), manager=manager, unit=text_of("unit") or "appliance",
                   supervisord_conf=optional_path("supervisord_conf"),
                   program=text_of("program") or "appliance")


def load_receipt(path: Path | None = None) -> Receipt | None:
    """The receipt of the environment this interpreter runs from; None when it was not installed by install.sh."""
    p = path or receipt_path()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReceiptError(f"{p}: cannot read: {exc.strerror}") from None
    return parse_receipt(text, p)


def connect_host(bind: str) -> str:
    """Where a client on this box reaches a daemon bound to `bind` (a wildcard bind answers on loopback)."""
    try:
        addr = ipaddress.ip_address(bind)
    except ValueError:
        return bind  # "localhost"
    if addr.is_unspecified:
        return "[::1]" if addr.version == 6 else "127.0.0.1"
    return f"[{bind}]" if addr.version == 6 else bind


def daemon_base(env: Mapping[str, str], host: str | None, port: int | None, tls: bool) -> str:
    """The daemon's base URL: APPLIANCE_URL, else the configured host and port (https when it serves TLS),
    else the default http://127.0.0.1:8080."""
    explicit = env.get("APPLIANCE_URL", "").strip()
    if explicit:
        return explicit.rstrip("/")
    if host is None or port is None:
        return "http://127.0.0.1:8080"
    return f"{'https' if tls else 'http'}://{connect_host(host)}:{port}"


def read_key_file(path: Path | None) -> str | None:
    """The admin key install.sh stored (mode 0600); None when there is none or it cannot be read."""
    if path is None:
        return None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return key or None
