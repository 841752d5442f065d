"""Per-engine output: the last lines in memory (for the API) and a size-rotated file on disk.

It owns nothing but the lines; it must not parse or interpret them.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path


class OutputLog:
    def __init__(self, path: Path | None, ring_lines: int = 2000, max_bytes: int = 5 << 20, backups: int = 3):
        self.path = path
        self.ring: deque[str] = deque(maxlen=ring_lines)
        self.written = 0  # lines since the daemon started: lets a follower tell new lines from old
        self.max_bytes = max_bytes
        self.backups = backups
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "ab")  # noqa: SIM115 - kept open for the engine's lifetime

    def write_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        self.ring.append(line)
        self.written += 1
        if self._fh is None:
            return
        self._fh.write(raw if raw.endswith(b"\n") else raw + b"\n")
        self._fh.flush()
        if self._fh.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        assert self.path is not None and self._fh is not None
        self._fh.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "ab")  # noqa: SIM115

    def tail(self, n: int) -> list[str]:
        if n <= 0:
            return []
        return list(self.ring)[-n:]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
