"""The router's secrets on disk: the fleet token (sent to every box as X-Fleet-Token; `fleet.token_file`,
default <state_dir>/fleet.token), the join token (`router.join_token_file`, default
<state_dir>/join.token) and the admin key the router uses to drain boxes (<state_dir>/router/admin.key).

Each is created on first use with a random value, mode 0600, written atomically (fleet.token.write_token,
the one writer of secret files); a file the user put
there is used as it is. It must not log or print a secret.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from ..config import Config
from ..fleet.token import write_token


def join_token_path(cfg: Config) -> Path:
    return (Path(cfg.router.join_token_file).expanduser() if cfg.router.join_token_file
            else cfg.state_path() / "join.token")


def read_or_create(path: Path) -> str:
    """The secret in `path`, created (random, 0600) when the file is missing or empty."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = secrets.token_urlsafe(32)
        write_token(path, value)
    return value


def same(presented: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(presented.encode(), expected.encode())
