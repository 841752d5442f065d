"""Reading a daemon's `/api/events` in tests: the replayed past and what follows, up to an event."""

from __future__ import annotations

import http.client
import json
from typing import Any


def events_until(port: int, key: str, kind: str, history: int = 500, timeout_s: float = 10) -> list[dict[str, Any]]:
    """Every event read from `/api/events?history=N` until the first of `kind` (included); the socket
    timeout (`timeout_s`) bounds each read, so a missing event fails instead of hanging."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    conn.request("GET", f"/api/events?history={history}", headers={"Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    seen: list[dict[str, Any]] = []
    buf = b""
    try:
        while not seen or seen[-1]["kind"] != kind:
            chunk = resp.read1(65536)
            if not chunk:
                raise AssertionError(f"the event stream ended before a {kind} event")
            buf += chunk
            *blocks, buf = buf.split(b"\n\n")
            for block in blocks:
                for line in block.split(b"\n"):
                    if line.startswith(b"data: ") and (not seen or seen[-1]["kind"] != kind):
                        seen.append(json.loads(line[6:]))
    finally:
        conn.close()
    return seen
