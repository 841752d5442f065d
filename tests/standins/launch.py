"""Start, probe and stop stand-in servers (or any real child process) from tests.

Owns: picking a free loopback port, launching a command in its own session (so its whole process
group, grandchildren included, can be killed), polling readiness with a deadline, stopping by
killing the group, and reading the fake-GPU usage files the stand-ins write.
Must not: sleep to sequence events (everything polls a condition against a deadline), talk to
anything but 127.0.0.1, or import the stand-in modules (they are scripts, not a package).

Usage::

    from standins.launch import free_port, start, vllm_argv, wait_ready
    port = free_port()
    with start(vllm_argv("my-model", port), env={"APPLIANCE_FAKE_GPU_DIR": str(d)}) as server:
        wait_ready(server.url("/health"), proc=server)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from .standin_common import pid_alive

STANDINS_DIR = Path(__file__).resolve().parent
VLLM_SCRIPT = STANDINS_DIR / "vllm_standin.py"
COMFYUI_SCRIPT = STANDINS_DIR / "comfyui_standin.py"
LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def vllm_argv(model: str, port: int, *extra: str) -> list[str]:
    """``vllm serve MODEL --host 127.0.0.1 --port P ...`` with the stand-in as the executable."""
    return [sys.executable, str(VLLM_SCRIPT), "serve", model, "--host", LOOPBACK, "--port", str(port), *extra]


def comfyui_argv(
    port: int, output_dir: str | os.PathLike[str], input_dir: str | os.PathLike[str], *extra: str
) -> list[str]:
    return [
        sys.executable,
        str(COMFYUI_SCRIPT),
        "--listen",
        LOOPBACK,
        "--port",
        str(port),
        "--output-directory",
        str(output_dir),
        "--input-directory",
        str(input_dir),
        *extra,
    ]


@dataclass
class Running:
    """A child process started in its own session; its pid is also its process-group id."""

    proc: subprocess.Popen[bytes]
    port: int | None
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "") -> str:
        if self.port is None:
            raise ValueError("this process was started without a port")
        return f"http://{LOOPBACK}:{self.port}{path}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int | None:
        """SIGKILL the whole process group and reap the child; returns its exit status."""
        return kill_group(self.proc)

    def __enter__(self) -> Running:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    argv: list[str],
    *,
    env: Mapping[str, str | None] | None = None,
    port: int | None = None,
    log_path: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Running:
    """Start ``argv`` in a new session with ``os.environ`` updated by ``env`` (None removes a key).

    stdout and stderr go to ``log_path`` (a temporary file when not given). ``port`` is only
    recorded, for ``Running.url``. Always stop the result (``with start(...)`` or ``.stop()``).
    """
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="standin-", suffix=".log")
        os.close(fd)
        log_path = name
    path = Path(log_path)
    with path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Running(proc, port, path)


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> int | None:
    """Send ``sig`` to the process group led by ``proc`` and, for SIGKILL, reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    if sig != signal.SIGKILL:
        return proc.poll()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def wait_until(
    predicate: Callable[[], T | None], deadline_s: float = 10.0, interval_s: float = 0.02, message: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {deadline_s}s waiting for {message}")
        time.sleep(interval_s)


async def async_wait_until(
    predicate: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    deadline_s: float = 10.0,
    interval_s: float = 0.02,
    message: str = "condition",
) -> T:
    """``wait_until`` without blocking the event loop; the predicate may be async (e.g. one that
    makes an HTTP request) or plain (state another task changes)."""
    import asyncio
    import inspect

    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {deadline_s}s waiting for {message}")
        await asyncio.sleep(interval_s)


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The HTTP status of GET ``url``, or None when nothing answers (refused, reset, timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return None


def wait_ready(
    url: str, deadline_s: float = 20.0, proc: Running | subprocess.Popen[bytes] | None = None, interval_s: float = 0.02
) -> None:
    """Poll GET ``url`` until it answers 200. Fails early, with the log, when ``proc`` exits."""
    popen = proc.proc if isinstance(proc, Running) else proc
    deadline = time.monotonic() + deadline_s
    while True:
        if http_status(url) == 200:
            return
        if popen is not None and popen.poll() is not None:
            log = proc.log()[-4000:] if isinstance(proc, Running) else ""
            raise RuntimeError(f"process exited with {popen.returncode} before {url} was ready\n{log}")
        if time.monotonic() >= deadline:
            log = proc.log()[-4000:] if isinstance(proc, Running) else ""
            raise TimeoutError(f"{url} not ready after {deadline_s}s\n{log}")
        time.sleep(interval_s)


async def async_wait_ready(url: str, deadline_s: float = 20.0, proc: Running | None = None) -> None:
    """``wait_ready`` for async tests (runs the polling in a thread)."""
    import asyncio

    await asyncio.to_thread(wait_ready, url, deadline_s, proc)


def connection_refused(host: str, port: int) -> bool:
    """True when a TCP connect to host:port is actively refused (bound but not listening, or free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False


# --- fake GPU ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeGpuEntry:
    pid: int
    used_bytes: int
    name: str


def fake_gpu_usage(directory: str | os.PathLike[str]) -> dict[int, FakeGpuEntry]:
    """The usage files of live processes in a fake-GPU directory, by pid."""
    entries: dict[int, FakeGpuEntry] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return entries
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as fh:
                data = json.load(fh)
            entry = FakeGpuEntry(int(data["pid"]), int(data["used_bytes"]), str(data["name"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue
        if pid_alive(entry.pid):
            entries[entry.pid] = entry
    return entries


def fake_gpu_used_bytes(directory: str | os.PathLike[str], pids: set[int] | None = None) -> int:
    """Total bytes reported by live processes (only ``pids`` when given)."""
    return sum(e.used_bytes for e in fake_gpu_usage(directory).values() if pids is None or e.pid in pids)


# --- process tree -----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def parent_pid(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def process_group(pid: int) -> int:
    return int(_stat_fields(pid)[2])


def ignored_signals(pid: int) -> set[int]:
    """Signals ``pid`` ignores, from the SigIgn mask in /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("SigIgn:"):
                mask = int(line.split()[1], 16)
                return {n for n in range(1, 65) if mask & (1 << (n - 1))}
    return set()


def group_members(pgid: int) -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
                if process_group(int(entry)) == pgid and pid_alive(int(entry)):
                    yield int(entry)
