"""Joining a fleet and leaving it, the parts `appliance fleet join|leave` are made of.

- `request_join`: the one call to the router (`POST {router}/api/fleet/join`, the join token as a
  bearer token, with a deadline); `parse_answer` checks what it returned, naming any bad field.
- `join_changes` / `leave_changes`: the settings a join or a leave writes (store.url, [jobs],
  [fleet] enabled, advertise_url, router_url), as {table: {key: value}}.
- `edit_config`: those settings applied to the text of the user's configuration file, keeping every
  other line, comment and table as it was (tomlkit); `write_atomically`: a temporary file beside it,
  then a rename, with the file's mode kept.
It must not read the environment, print, or decide when to restart anything: `fleet.cli` does.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOIN_PATH = "/api/fleet/join"
JOIN_DEADLINE_S = 15.0


class JoinError(Exception):
    """The join could not be made; one line saying what and where."""


@dataclass(frozen=True)
class JoinAnswer:
    store_url: str
    jobs: dict[str, Any]  # backend, brokers, topic_prefix, group, partitions
    fleet_token: str
    router_url: str


def request_join(router: str, token: str, body: dict[str, Any], *, timeout_s: float = JOIN_DEADLINE_S,
                 cafile: Path | None = None) -> Any:
    """POST the join request; the router's JSON answer, or JoinError (never showing the token)."""
    url = router.rstrip("/") + JOIN_PATH
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=ctx) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        if exc.code == 401:
            raise JoinError(f"{url}: 401: the router refused the join token ({message})") from None
        raise JoinError(f"{url}: {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JoinError(f"{url}: no answer within {timeout_s:g} s ({reason})") from None
    except ValueError:
        raise JoinError(f"{url}: the answer is not JSON") from None


def _text(doc: dict[str, Any], key: str, where: str = "") -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise JoinError(f"the router's answer: {where}{key}: must be a non-empty string, got {value!r}")
    return value.strip()


def parse_answer(doc: Any) -> JoinAnswer:
    """The router's answer checked field by field (contract: docs/fleet.md, "Joining and leaving")."""
    if not isinstance(doc, dict):
        raise JoinError(f"the router's answer: must be a JSON object, got {type(doc).__name__}")
    store_url = _text(doc, "store_url")
    if not store_url.startswith(("postgresql://", "postgres://")):
        raise JoinError("the router's answer: store_url: must be a postgresql:// URL")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict):
        raise JoinError(f"the router's answer: jobs: must be an object, got {jobs!r}")
    backend = _text(jobs, "backend", "jobs.")
    if backend not in ("kafka", "local"):
        raise JoinError(f"the router's answer: jobs.backend: must be \"kafka\" or \"local\", got {backend!r}")
    brokers = jobs.get("brokers", [])
    if not isinstance(brokers, list) or not all(isinstance(b, str) and b for b in brokers) or (
            backend == "kafka" and not brokers):
        raise JoinError(f"the router's answer: jobs.brokers: must be a list of host:port, got {brokers!r}")
    settled: dict[str, Any] = {"backend": backend, "brokers": list(brokers)}
    for key in ("topic_prefix", "group"):
        if key in jobs:
            settled[key] = _text(jobs, key, "jobs.")
    if "partitions" in jobs:
        partitions = jobs["partitions"]
        if not isinstance(partitions, int) or isinstance(partitions, bool) or not 1 <= partitions <= 1024:
            raise JoinError(f"the router's answer: jobs.partitions: must be an integer 1-1024, got {partitions!r}")
        settled["partitions"] = partitions
    router_url = doc.get("router_url", "")
    if not isinstance(router_url, str) or (router_url and not router_url.startswith(("http://", "https://"))):
        raise JoinError(f"the router's answer: router_url: must be an http(s) URL, got {router_url!r}")
    return JoinAnswer(store_url, settled, _text(doc, "fleet_token"), router_url.rstrip("/"))


def join_changes(answer: JoinAnswer, advertise_url: str, router: str) -> dict[str, dict[str, Any]]:
    return {
        "store": {"url": answer.store_url},
        "jobs": dict(answer.jobs),
        "fleet": {"enabled": True, "advertise_url": advertise_url, "router_url": answer.router_url or router},
    }


def leave_changes() -> dict[str, dict[str, Any]]:
    return {"fleet": {"enabled": False}}


def edit_config(text: str, changes: dict[str, dict[str, Any]]) -> str:
    """`text` with each `changes[table][key]` set (tables made at the end when missing), the rest kept."""
    import tomlkit  # only for this command: not in the daemon
    from tomlkit.items import Table

    doc = tomlkit.parse(text)
    for name, values in changes.items():
        table = doc.get(name)
        if table is None:
            table = tomlkit.table()
            doc[name] = table
        if not isinstance(table, Table | dict):
            raise JoinError(f"{name}: is not a table in the configuration file")
        for key, value in values.items():
            table[key] = value
    return tomlkit.dumps(doc)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename (a reader sees the old file or the new one, never half)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
