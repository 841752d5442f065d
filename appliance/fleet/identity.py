"""The box's one identity: the id it owns jobs under and registers in the fleet under.

`box_identity(config, state_dir)`: `jobs.box_id` when configured; else the id kept in
`<state_dir>/box_id`; else a new one (`<hostname>-<8 hex>`) written there once and kept for good, so
the daemon and the CLI (`appliance fleet join`) agree and a restart keeps the box's jobs. Older
appliances named the box `hostname:port` (`legacy_box_id`); the daemon re-queues what that name was
running the first time it makes the new id.
It must not know the registry or the job table: callers use the id.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from pathlib import Path

from ..config import Config

FILE = "box_id"


def legacy_box_id(port: int) -> str:
    """The name an appliance without a configured jobs.box_id used before the id file existed."""
    return f"{socket.gethostname()}:{port}"


def new_box_id(hostname: str, token: str) -> str:
    """A readable, fleet-unique id: the host's name (characters safe in a URL path) and a random part."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname).strip("-.")[:40] or "box"
    return f"{name}-{token}"


def box_identity(config: Config, state_dir: Path) -> tuple[str, bool]:
    """(the box's id, whether it was made just now). OSError when the state directory is not writable."""
    if config.jobs.box_id:
        return config.jobs.box_id, False
    path = state_dir / FILE
    emptied = False
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            return kept, False
        emptied = True  # a file left empty (a full disk): made again below
    state_dir.mkdir(parents=True, exist_ok=True)
    made = new_box_id(socket.gethostname(), secrets.token_hex(4))
    tmp = path.with_name(f"{FILE}.{os.getpid()}.tmp")
    tmp.write_text(made + "\n", encoding="utf-8")
    try:
        if emptied:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the daemon and the CLI raced and the other one won: theirs is kept
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip(), False
    finally:
        tmp.unlink(missing_ok=True)
    return made, True


def box_id(config: Config, state_dir: Path) -> str:
    return box_identity(config, state_dir)[0]
