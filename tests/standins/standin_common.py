"""Shared runtime of the vLLM and ComfyUI stand-in servers.

Owns: reading the stand-in knobs from the environment, the fake-GPU usage file
(``$APPLIANCE_FAKE_GPU_DIR/<pid>.json``), the readiness gate (a socket bound early that only
starts listening when the engine is "ready"), hang mode, and the signal/shutdown loop.
Must not: know any engine's routes or semantics, or import anything beyond aiohttp and the stdlib.
These modules are loaded as siblings of the stand-in script (``python tests/standins/x.py``), so
they import each other by bare module name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

GIB = 1 << 30
FAKE_GPU_DIR_ENV = "APPLIANCE_FAKE_GPU_DIR"


class KnobError(SystemExit):
    """A knob holds a value that cannot be parsed; the stand-in exits with status 2."""


class Knobs:
    """Typed access to the ``<PREFIX>_<NAME>`` environment variables of one stand-in."""

    def __init__(self, prefix: str, environ: dict[str, str] | None = None) -> None:
        self.prefix = prefix
        self._env = dict(os.environ if environ is None else environ)

    def raw(self, name: str) -> str | None:
        value = self._env.get(f"{self.prefix}_{name}")
        return value if value not in (None, "") else None

    def _fail(self, name: str, value: str, kind: str) -> KnobError:
        print(f"{self.prefix}_{name}={value!r} is not a valid {kind}", file=sys.stderr, flush=True)
        return KnobError(2)

    def float(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise self._fail(name, value, "number") from None

    def int(self, name: str, default: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return int(float(value)) if "e" in value.lower() else int(value)
        except ValueError:
            raise self._fail(name, value, "integer") from None

    def flag(self, name: str) -> bool:
        value = self.raw(name)
        return value is not None and value.lower() not in ("0", "false", "no", "off")

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value


def write_json_atomic(path: str, payload: dict[str, object]) -> None:
    """Write ``payload`` to ``path`` so that readers never see a partial file."""
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


class FakeGpuReport:
    """The per-process usage file the daemon's FakeGpuProbe reads.

    Format (fixed by the brief): ``{"pid": int, "used_bytes": int, "name": str}`` in
    ``$APPLIANCE_FAKE_GPU_DIR/<pid>.json``, rewritten atomically whenever usage changes and
    removed on a clean exit. Without the directory nothing is written, but usage is still tracked.
    """

    def __init__(self, name: str, directory: str | None = None, pid: int | None = None) -> None:
        self.name = name
        self.directory = directory if directory is not None else (os.environ.get(FAKE_GPU_DIR_ENV) or None)
        self.pid = pid if pid is not None else os.getpid()
        self.used_bytes: int | None = None

    @property
    def path(self) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, f"{self.pid}.json")

    def set(self, used_bytes: int) -> None:
        used_bytes = max(0, int(used_bytes))
        if used_bytes == self.used_bytes:
            return
        self.used_bytes = used_bytes
        path = self.path
        if path is not None:
            write_json_atomic(path, {"pid": self.pid, "used_bytes": used_bytes, "name": self.name})

    def remove(self) -> None:
        path = self.path
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no memory: the probe must not count it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def fake_gpu_total_used(directory: str | None) -> int:
    """Sum of ``used_bytes`` over live processes in the fake-GPU dir (like NVML's used memory)."""
    if directory is None:
        return 0
    total = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as fh:
                entry = json.load(fh)
            pid = int(entry["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not pid_alive(pid):
            continue
        total += int(entry.get("used_bytes", 0))
    return total


def bind_unlistened(host: str, port: int) -> socket.socket:
    """Bind a TCP socket without listening: connects are refused until aiohttp starts serving.

    This is how vLLM behaves during loading (contracts §1.2: the port is bound before the engine
    is built so nothing else can take it, but nothing accepts until uvicorn starts).
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.setblocking(False)
    return sock


def bind_unlistened_unix(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock


@web.middleware
async def hang_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Hang knob: accept the connection, then never answer."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")  # pragma: no cover


def log(line: str) -> None:
    """One line on stdout, flushed, in the shape of the real servers' log lines."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    sys.stdout.write(f"INFO {stamp} {line}\n")
    sys.stdout.flush()


class Lifecycle:
    """Signals, the loading phase and orderly shutdown of one stand-in process.

    Shutdown order on SIGTERM/SIGINT: stop accepting, close open connections (with a short
    grace), remove the fake-GPU file, exit 0. With ``hang`` SIGTERM and SIGINT are ignored, so
    only SIGKILL ends the process.
    """

    def __init__(self, *, hang: bool) -> None:
        self.hang = hang
        self.stop = asyncio.Event()

    def install_signals(self) -> None:
        if self.hang:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)

    async def load(self, delay_s: float, ready_file: str | None) -> bool:
        """Stay in the loading phase for ``delay_s`` and until ``ready_file`` exists.

        Returns False when a stop signal arrived during loading.
        """
        deadline = time.monotonic() + max(0.0, delay_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and (ready_file is None or await asyncio.to_thread(os.path.exists, ready_file)):
                return True
            wait = remaining if remaining > 0 else 0.02
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=min(wait, 0.25))
                return False
            except TimeoutError:
                continue


async def serve_until_stopped(
    app: web.Application,
    sock: socket.socket,
    lifecycle: Lifecycle,
    on_listening: Callable[[], None],
    *,
    shutdown_timeout: float = 2.0,
) -> None:
    """Start serving on the pre-bound ``sock``, announce it, and wait for the stop signal."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=2048)
    await site.start()
    on_listening()
    try:
        await lifecycle.stop.wait()
    finally:
        await runner.cleanup()


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run an async main on uvloop when it is installed (faster request path), else asyncio."""
    try:
        import uvloop  # optional speed-up; the stand-ins only need aiohttp and the stdlib
    except ImportError:
        code: int = asyncio.run(main())
    else:
        code = uvloop.run(main())
    sys.stdout.flush()
    sys.exit(code)
