"""The router's shared token on a box: where it lives (`fleet.token_file`, default
`<state_dir>/fleet.token`), reading it, and writing it (mode 0600, atomically).

`appliance fleet join` writes it; the daemon reads it to check `X-Fleet-Token`.
It must not log or print the token.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Config

DEFAULT_FILE = "fleet.token"


class TokenError(Exception):
    """The token file is missing, unreadable or empty; one line naming the file and the setting."""


def token_path(config: Config) -> Path:
    return Path(config.fleet.token_file).expanduser() if config.fleet.token_file else \
        config.state_path() / DEFAULT_FILE


def read_token(config: Config) -> str:
    path = token_path(config)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"fleet.token_file: cannot read {path} ({exc.strerror or exc}); "
                         "run `appliance fleet join` first") from None
    if not token:
        raise TokenError(f"fleet.token_file: {path} is empty; run `appliance fleet join` again")
    return token


def write_token(path: Path, token: str) -> None:
    """Write `token` to `path` readable by its owner only; never visible with wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
