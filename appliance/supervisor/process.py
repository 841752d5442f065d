"""ManagedProcess: the asynchronous driver around one engine's `ProcessMachine`.

It owns the engine's child handle, timers and output; it feeds inputs to the machine from one task
and executes the effects the machine returns (spawn through the launcher, readiness probing, group
signals, timers). Other code asks it for what it needs (`await ensure_ready()`, `await stop()`)
instead of reading the state and acting on it.

Lifecycle reporting: every transition goes, as a typed `Transition`, synchronously to the listeners
registered with `on_transition` (the residency manager: a lossless control path) and, as telemetry,
to the EventBus (which may drop). Who restarts the engine is the machine's `autorestart` rule
(machine.py); the residency manager switches it off for the engines it schedules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..events import Event, EventBus
from .launcher import ChildHandle, Launcher, LaunchSpec, SpawnError
from .logs import OutputLog
from .machine import (
    BeginProbe,
    Effect,
    Exited,
    Input,
    ProbePassed,
    ProcessMachine,
    SetTimer,
    SignalGroup,
    Spawn,
    Spawned,
    SpawnFailed,
    StartRequested,
    StartWanted,
    StopRequested,
    TimerFired,
)
from .states import ProcessState, Transition

log = logging.getLogger("appliance.supervisor")

Probe = Callable[[], Awaitable[bool]]


class EngineUnavailable(Exception):
    """The engine could not be brought to READY (fatal, or not in time).

    `retry_after`: seconds after which asking again can succeed (the rest of a fatal cool-down)."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


Listener = Callable[[Transition], None]


@dataclass(frozen=True)
class ProcessTimings:
    ready_timeout_s: float
    stop_grace_s: float
    max_failures: int
    window_s: float
    backoff_initial_s: float
    backoff_max_s: float
    fatal_retry_s: float = 0.0  # 0: a fatal engine waits for an operator
    probe_interval_s: float = 0.25


class ManagedProcess:
    def __init__(
        self,
        name: str,
        spec_factory: Callable[[], LaunchSpec],
        probe: Probe,
        launcher: Launcher,
        timings: ProcessTimings,
        bus: EventBus | None = None,
        output: OutputLog | None = None,
    ) -> None:
        self.name = name
        self._spec_factory = spec_factory
        self._probe = probe
        self._launcher = launcher
        self._timings = timings
        self._bus = bus
        self.output = output or OutputLog(None)
        self.machine = ProcessMachine(
            name,
            ready_timeout_s=timings.ready_timeout_s,
            stop_grace_s=timings.stop_grace_s,
            max_failures=timings.max_failures,
            window_s=timings.window_s,
            backoff_initial_s=timings.backoff_initial_s,
            backoff_max_s=timings.backoff_max_s,
            fatal_retry_s=timings.fatal_retry_s,
            on_state=self._on_state,
        )
        self._listeners: list[Listener] = []
        self._child: ChildHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()  # serialises machine inputs

    # -- read-only views ------------------------------------------------------------------------
    @property
    def state(self) -> ProcessState:
        return self.machine.state

    @property
    def pid(self) -> int | None:
        return self.machine.pid

    @property
    def restarts(self) -> int:
        return self.machine.restarts

    @property
    def last_error(self) -> str:
        return self.machine.last_error

    def retry_in(self) -> float | None:
        """Seconds until a demand start can succeed (see `ProcessMachine.retry_in`)."""
        return self.machine.retry_in(asyncio.get_running_loop().time())

    def group_pids(self) -> set[int]:
        pid = self.machine.pid
        return self._launcher.group_pids(pid) if pid else set()

    # -- commands ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._feed(StartRequested())

    async def ensure_ready(self, timeout_s: float | None = None) -> None:
        """Start on demand if needed and wait for READY, waiting out a backoff; raise
        EngineUnavailable while FATAL (with the cool-down left as `retry_after`), if stopped
        meanwhile, or at the deadline."""
        if self.machine.state is ProcessState.READY:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s if timeout_s is not None else self._timings.ready_timeout_s * 2)
        await self._feed(StartWanted())
        while self.state is not ProcessState.READY:
            if self.state is ProcessState.FATAL:
                raise self.fatal_error()
            if self.state is ProcessState.STOPPED:
                raise EngineUnavailable(f"engine {self.name} was stopped")
            if self.state is ProcessState.BACKOFF:
                await self._feed(StartWanted())  # a crash during the start: the backoff's end restarts it
                if self.state is not ProcessState.BACKOFF:
                    continue  # changed while we waited for the machine: look again before waiting
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise EngineUnavailable(f"engine {self.name} not ready in time ({self.state.value})")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def fatal_error(self) -> EngineUnavailable:
        """Why a FATAL engine cannot be started on demand, and for how long."""
        left = self.retry_in()
        when = ("until an operator starts it again" if left is None
                else f"it is retried automatically in {max(1, round(left))}s")
        return EngineUnavailable(f"engine {self.name} is fatal ({self.last_error}); {when}",
                                 retry_after=left if left is not None else 600.0)

    async def stop(self) -> None:
        """Staged stop; returns once the process group is gone."""
        await self._feed(StopRequested())
        while self.state not in (ProcessState.STOPPED, ProcessState.FATAL):
            self._changed.clear()
            if self.state in (ProcessState.STOPPING, ProcessState.STARTING, ProcessState.READY):
                await self._changed.wait()
            else:  # BACKOFF: the machine stops it at once
                await self._feed(StopRequested())

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        await self.stop()
        for t in list(self._tasks):
            t.cancel()
        self.output.close()

    def on_transition(self, listener: Listener) -> None:
        """Call `listener` with every state change, synchronously, in order (it must not block)."""
        self._listeners.append(listener)

    def set_autorestart(self, on: bool) -> None:
        """Whether the supervisor restarts the engine by itself after a backoff or a fatal cool-down
        (the machine's rule); the owner of the engine's scheduling sets it once, at start-up."""
        self.machine.autorestart = on

    # -- the machine's plumbing -------------------------------------------------------------------
    def _on_state(self, t: Transition) -> None:
        reason = f" ({t.reason})" if t.reason else ""
        if t.new is ProcessState.FATAL:
            log.error("engine %s: %s -> fatal%s", self.name, t.old.value, reason)
        else:
            log.info("engine %s: %s -> %s%s", self.name, t.old.value, t.new.value, reason)
        self._changed.set()
        for listener in self._listeners:
            try:
                listener(t)
            except Exception:  # a listener's bug must not leave the machine half-way through a step
                log.exception("engine %s: a lifecycle listener failed on %s -> %s", self.name, t.old, t.new)
        if self._bus is not None:
            self._bus.publish(
                Event("engine.state", self.name, {"from": t.old.value, "to": t.new.value, "reason": t.reason,
                                                  "pid": self.machine.pid, "retry_in_s": self.retry_in()})
            )

    async def _feed(self, event: Input) -> None:
        async with self._lock:
            effects = self.machine.handle(event, asyncio.get_running_loop().time())
        for eff in effects:
            self._execute(eff)

    def _spawn_task(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _execute(self, eff: Effect) -> None:
        if isinstance(eff, Spawn):
            self._spawn_task(self._do_spawn())
        elif isinstance(eff, BeginProbe):
            if self._probe_task is not None:
                self._probe_task.cancel()
            self._probe_task = self._spawn_task(self._do_probe(eff.pid))
        elif isinstance(eff, SignalGroup):
            pid = self.machine.pid
            if pid is not None:
                self._launcher.signal_group(pid, eff.signum)
        elif isinstance(eff, SetTimer):
            loop = asyncio.get_running_loop()
            loop.call_later(eff.delay_s, lambda: self._spawn_task(self._feed(TimerFired(eff.kind, eff.token))))

    async def _do_spawn(self) -> None:
        try:
            spec = self._spec_factory()
            child = await self._launcher.spawn(spec)
        except SpawnError as exc:
            self.output.write_line(f"[appliance] spawn failed: {exc.reason}".encode())
            await self._feed(SpawnFailed(exc.reason, exc.permanent))
            return
        except Exception as exc:  # a bad spec is permanent: retrying builds the same one
            self.output.write_line(f"[appliance] spawn failed: {exc}".encode())
            await self._feed(SpawnFailed(str(exc), True))
            return
        self._child = child
        self._spawn_task(self._pump_output(child))
        await self._feed(Spawned(child.pid))
        self._spawn_task(self._await_exit(child))

    async def _pump_output(self, child: ChildHandle) -> None:
        stream = child.output
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the stream limit: take what is buffered
                line = await stream.read(65536)
            if not line:
                return
            self.output.write_line(line)

    async def _await_exit(self, child: ChildHandle) -> None:
        rc = await child.wait()
        if self._probe_task is not None:
            self._probe_task.cancel()
        self.output.write_line(f"[appliance] process {child.pid} exited with {rc}".encode())
        await self._feed(Exited(child.pid, rc))

    async def _do_probe(self, pid: int) -> None:
        while self.machine.pid == pid and self.state is ProcessState.STARTING:
            try:
                ok = await self._probe()
            except Exception:
                ok = False
            if ok:
                await self._feed(ProbePassed())
                return
            await asyncio.sleep(self._timings.probe_interval_s)
