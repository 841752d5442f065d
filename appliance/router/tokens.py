"""The router's secrets on disk: the fleet token (sent to every box as X-Fleet-Token; `fleet.token_file`,
default <state_dir>/fleet.token), the join token (`router.join_token_file`, default
<state_dir>/join.token) and the admin key the router uses to drain boxes (<state_dir>/router/admin.key).

Each is created on first use with a random value, mode 0600, written atomically; a file the user put
there is used as it is. It must not log or print a secret.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from ..config import Config


def fleet_token_path(cfg: Config) -> Path:
    return Path(cfg.fleet.token_file).expanduser() if cfg.fleet.token_file else cfg.state_path() / "fleet.token"


def join_token_path(cfg: Config) -> Path:
    return (Path(cfg.router.join_token_file).expanduser() if cfg.router.join_token_file
            else cfg.state_path() / "join.token")


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_or_create(path: Path) -> str:
    """The secret in `path`, created (random, 0600) when the file is missing or empty."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = secrets.token_urlsafe(32)
        write_secret(path, value)
    return value


def same(presented: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(presented.encode(), expected.encode())
