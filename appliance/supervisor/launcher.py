"""The OS seam of supervision: spawn an engine under its guard in a new session, signal its process
group, list the group's members, and keep the pid file that lets the next start reap leftovers.

Tests replace `Launcher` with a recording fake; nothing else in the supervisor touches the OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

GUARD = str(Path(__file__).with_name("guard.py"))
GROUP_EXIT_DEADLINE_S = 10.0  # after SIGKILL, how long the group's processes may take to disappear


class SpawnError(Exception):
    def __init__(self, reason: str, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    cwd: str | None = None


class ChildHandle(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def output(self) -> asyncio.StreamReader | None: ...

    async def wait(self) -> int: ...


class Launcher(Protocol):
    async def spawn(self, spec: LaunchSpec) -> ChildHandle: ...

    def signal_group(self, pgid: int, signum: int) -> None: ...

    def group_pids(self, pgid: int) -> set[int]: ...


@dataclass
class _Child:
    proc: asyncio.subprocess.Process
    name: str
    pidfile: PidFile | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> asyncio.StreamReader | None:
        return self.proc.stdout

    async def wait(self) -> int:
        rc = await self.proc.wait()
        # The guard normally takes its group down with it; if the guard itself was killed (SIGKILL,
        # OOM), the engine's processes are orphans still in its group: they must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        # "Exited" means the whole group is gone (its memory freed), not only the guard.
        for _ in range(int(GROUP_EXIT_DEADLINE_S / 0.02)):
            if not group_members(self.proc.pid):
                break
            await asyncio.sleep(0.02)
        if self.pidfile is not None:
            self.pidfile.forget(self.name)
        return rc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> set[int]:
    """Every live process whose process group is `pgid` (zombies excluded)."""
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            found.add(int(name))
    return found


def process_start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # starttime, clock ticks since boot


def check_spec(spec: LaunchSpec) -> None:
    """Failures no retry can fix: no executable, no working directory."""
    exe = spec.argv[0] if spec.argv else ""
    if not exe or shutil.which(exe, path=spec.env.get("PATH", os.environ.get("PATH"))) is None:
        raise SpawnError(f"executable {exe!r} not found", permanent=True)
    if spec.cwd and not os.path.isdir(spec.cwd):
        raise SpawnError(f"working directory {spec.cwd!r} does not exist", permanent=True)


class OsLauncher:
    def __init__(self, pidfile: PidFile | None = None) -> None:
        self.pidfile = pidfile

    async def spawn(self, spec: LaunchSpec) -> ChildHandle:
        check_spec(spec)
        exe = spec.argv[0]
        env = {**os.environ, **spec.env}
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", GUARD, str(os.getpid()), "--", *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=spec.cwd,
            )
        except OSError as exc:
            raise SpawnError(f"cannot start {exe!r}: {exc.strerror}", permanent=False) from exc
        if self.pidfile is not None:
            self.pidfile.record(spec.name, proc.pid)
        return _Child(proc, spec.name, self.pidfile)

    def signal_group(self, pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)

    def group_pids(self, pgid: int) -> set[int]:
        return group_members(pgid)


class PidFile:
    """`<state>/run/engines.json`: engine -> {pgid, start time}; written on every spawn and exit.

    After a daemon crash (SIGKILL, OOM) the next start reads it and kills every group still alive
    whose leader is the very process recorded (same start time), so a reused pid is never hit.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _read(self) -> dict[str, dict[str, int]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {k: dict(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self, data: dict[str, dict[str, int]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    def record(self, name: str, pgid: int) -> None:
        data = self._read()
        data[name] = {"pgid": pgid, "starttime": process_start_time(pgid) or 0, "daemon": os.getpid()}
        self._write(data)

    def forget(self, name: str) -> None:
        data = self._read()
        if data.pop(name, None) is not None:
            self._write(data)

    def forget_all(self) -> None:
        self._write({})

    def reap_leftovers(self, deadline_s: float = 5.0) -> list[str]:
        """Kill groups left by a previous daemon; returns a line per reaped engine."""
        reaped: list[str] = []
        for name, rec in self._read().items():
            pgid = int(rec.get("pgid", 0))
            if pgid <= 1 or rec.get("daemon") == os.getpid():
                continue
            members = group_members(pgid)
            leader_same = process_start_time(pgid) == rec.get("starttime")
            if not members or (pgid in members and not leader_same):
                continue  # gone, or the pid now belongs to someone else
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            end = time.monotonic() + deadline_s
            while group_members(pgid) and time.monotonic() < end:
                time.sleep(0.02)
            reaped.append(f"{name}: killed leftover process group {pgid} ({len(members)} processes)")
        self._write({})
        return reaped
