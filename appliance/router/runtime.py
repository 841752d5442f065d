"""HAProxy's runtime API (the master-worker's admin stats socket): send a command, read its answer.

One connection per command, each with a deadline. HAProxy answers a successful `set server ...
state`, `add map`, `set map`, `del map` or `clear map` with an empty line and `set server ... addr`
with a sentence saying what changed; anything else is its error message, raised as RuntimeApiError.
It must not decide what to send (commands.py does).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

DEADLINE_S = 2.0


class RuntimeApiError(Exception):
    """A command HAProxy refused, or the socket could not be reached in time."""


def _accepted(command: str, answer: str) -> bool:
    if not answer:
        return True
    if command.startswith("set server ") and " addr " in command:
        return "changed" in answer or "no need to change" in answer
    return False


class RuntimeApi:
    def __init__(self, socket: Path, deadline_s: float = DEADLINE_S) -> None:
        self.socket = socket
        self.deadline_s = deadline_s

    async def ask(self, command: str) -> str:
        """The answer to one command (stripped)."""
        if "\n" in command or ";" in command:
            raise RuntimeApiError(f"refusing a command with a separator: {command!r}")
        try:
            async with asyncio.timeout(self.deadline_s):
                reader, writer = await asyncio.open_unix_connection(str(self.socket))
                try:
                    writer.write(command.encode() + b"\n")
                    await writer.drain()
                    data = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise RuntimeApiError(f"HAProxy's runtime API at {self.socket}: {exc or 'timed out'}") from None
        return data.decode(errors="replace").strip()

    async def run(self, command: str) -> None:
        answer = await self.ask(command)
        if not _accepted(command, answer):
            raise RuntimeApiError(f"HAProxy refused {command!r}: {answer}")

    async def run_all(self, commands: list[str]) -> None:
        for command in commands:
            await self.run(command)

    async def map_entries(self, path: Path) -> dict[str, str]:
        """`show map`: what HAProxy's map holds now (key -> value)."""
        out: dict[str, str] = {}
        for line in (await self.ask(f"show map {path}")).splitlines():
            parts = line.split()
            if len(parts) == 3:
                out[parts[1]] = parts[2]
        return out

    async def server_status(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> status ("UP", "DOWN", "MAINT", "DRAIN", "no check"...) from `show stat`."""
        out: dict[tuple[str, str], str] = {}
        lines = (await self.ask("show stat")).splitlines()
        if not lines:
            return out
        header = lines[0].lstrip("# ").split(",")
        try:
            px, sv, st = header.index("pxname"), header.index("svname"), header.index("status")
        except ValueError:
            return out
        for line in lines[1:]:
            cols = line.split(",")
            if len(cols) > st and cols[sv] not in ("FRONTEND", "BACKEND"):
                out[(cols[px], cols[sv])] = cols[st]
        return out
