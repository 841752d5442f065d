"""The haproxy process: started in master-worker mode in its own session, reloaded hitlessly, stopped.

Steps: `check` runs `haproxy -c` on a written config before it is used (a bad config never replaces a
running one); `start` reaps a master left by an earlier router (its pid file), spawns
`haproxy -W -f CONFIG -p PIDFILE` with the fleet token in its environment and waits (bounded) until
the runtime API answers; `reload` sends SIGUSR2 to the master, which starts new workers on the new
config and lets the old ones finish their connections; `stop` sends SIGTERM to the master, waits a
grace period, then SIGKILLs the process group. `watch` restarts a master that exited by itself, with
a growing delay. It must not decide what the config says (haproxy_config.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from .haproxy_config import Paths
from .runtime import RuntimeApi, RuntimeApiError

log = logging.getLogger("appliance.router")
START_DEADLINE_S = 10.0
STOP_GRACE_S = 5.0
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class HaproxyError(Exception):
    pass


class HaproxyProcess:
    def __init__(self, binary: str, paths: Paths, token: str) -> None:
        self.binary = binary
        self.paths = paths
        self.token = token
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.restarts = 0
        self.starts = 0  # successful starts (a watcher's restart included)

    @property
    def running(self) -> bool:
        """Whether the master process is alive now."""
        return self.proc is not None and self.proc.returncode is None

    def _missing(self, exc: OSError) -> HaproxyError:
        return HaproxyError(f"router.haproxy_bin: cannot run {self.binary!r} ({exc.strerror or exc}); "
                            "install HAProxy 2.6 or later (apt-get install haproxy)")

    async def check(self, config: Path) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary, "-c", "-q", "-f", str(config), env=self._env(),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            raise self._missing(exc) from None
        try:
            async with asyncio.timeout(START_DEADLINE_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise HaproxyError(f"{self.binary} -c {config}: no answer in {START_DEADLINE_S:.0f} s") from None
        if proc.returncode != 0:
            raise HaproxyError(f"{self.binary} -c {config}: {out.decode(errors='replace').strip()}")

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "APPLIANCE_FLEET_TOKEN": self.token}

    def _reap_leftover(self) -> None:
        try:
            pid = int(self.paths.pid.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return
        if b"haproxy" in cmdline and str(self.paths.config).encode() in cmdline:
            log.warning("stopping HAProxy left by an earlier router (pid %d)", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    async def start(self) -> None:
        self._reap_leftover()
        with contextlib.suppress(FileNotFoundError):
            self.paths.socket.unlink()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "-W", "-f", str(self.paths.config), "-p", str(self.paths.pid),
                env=self._env(), start_new_session=True, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            raise self._missing(exc) from None
        api = RuntimeApi(self.paths.socket, deadline_s=1.0)
        loop = asyncio.get_running_loop()
        until = loop.time() + START_DEADLINE_S
        while loop.time() < until:
            if self.proc.returncode is not None:
                raise HaproxyError(f"{self.binary} exited with {self.proc.returncode} at start (see its log above)")
            with contextlib.suppress(RuntimeApiError):
                if "Pid:" in await api.ask("show info"):
                    self.starts += 1
                    log.info("HAProxy started (master pid %d)", self.proc.pid)
                    return
            await asyncio.sleep(0.05)
        await self.stop()
        raise HaproxyError(f"HAProxy's runtime API did not answer within {START_DEADLINE_S:.0f} s")

    async def reload(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            await self.start()
            return
        old_pid = await self._worker_pid()
        self.proc.send_signal(signal.SIGUSR2)
        api = RuntimeApi(self.paths.socket, deadline_s=1.0)
        loop = asyncio.get_running_loop()
        until = loop.time() + START_DEADLINE_S
        while loop.time() < until:  # the new worker answers on the socket with another pid
            pid = await self._worker_pid(api)
            if pid is not None and pid != old_pid:
                log.info("HAProxy reloaded (worker pid %s)", pid)
                return
            await asyncio.sleep(0.05)
        raise HaproxyError(f"HAProxy did not reload within {START_DEADLINE_S:.0f} s")

    async def _worker_pid(self, api: RuntimeApi | None = None) -> str | None:
        try:
            info = await (api or RuntimeApi(self.paths.socket, deadline_s=1.0)).ask("show info")
        except RuntimeApiError:
            return None
        for line in info.splitlines():
            if line.startswith("Pid:"):
                return line.split(":", 1)[1].strip()
        return None

    async def stop(self) -> None:
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.paths.pid.unlink()

    async def watch(self) -> None:
        """Restart a master that exits while the router still runs (bounded delays, then keep trying)."""
        while not self.stopping:
            proc = self.proc
            if proc is None:
                await asyncio.sleep(0.5)
                continue
            code = await proc.wait()
            if self.stopping:
                return
            delay = RESTART_DELAYS_S[min(self.restarts, len(RESTART_DELAYS_S) - 1)]
            self.restarts += 1
            log.error("HAProxy exited with %s; restarting in %.1f s", code, delay)
            await asyncio.sleep(delay)
            try:
                await self.start()
            except HaproxyError as exc:
                log.error("%s", exc)
