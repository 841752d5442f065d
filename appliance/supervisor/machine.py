"""The pure per-engine supervision machine: inputs in, effects out, time passed in.

It owns the state, the failure history and the timers' tokens of one engine; it never spawns,
signals, sleeps or reads a clock, so tests drive it synchronously with a fake launcher and clock.

Staged stop (the effects it emits, in order): SIGTERM to the process group; after `stop_grace_s`
SIGKILL to the group; the driver reaps, and the `Exited` input moves the machine to STOPPED.

Failures: an unexpected exit (or a readiness timeout, which first kills the group, or a spawn that
failed) records a failure in whichever state the process was (starting or ready). With fewer than
`max_failures` failures inside `window_s` it waits `backoff_initial_s * 2**k` (capped at
`backoff_max_s`) in BACKOFF; otherwise it goes FATAL and, when `fatal_retry_s` > 0, a cool-down
timer clears the failure history after that long (0: fatal until an operator starts it).

Who restarts (one rule, set per engine by its owner): with `autorestart` (engines nothing schedules:
the web UI, CPU workers) the machine restarts by itself when the backoff or the cool-down ends.
Without it (engines the residency manager schedules on the GPU) it never starts a process nobody
asked for: the end of a backoff or cool-down goes to STOPPED unless a start is waiting
(`StartWanted`), and the residency manager starts the engine when its scheduler chooses a model
of it. Either way the machine paces restarts: a demand start waits out the backoff, and is refused
while FATAL (`fatal_retry_at`); only an operator's `StartRequested` cuts a backoff or a fatal short.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .states import ProcessState, Transition, check_transition

S = ProcessState


# ---- inputs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartRequested:
    pass


@dataclass(frozen=True)
class StartWanted:
    """A start on demand (a request needs the engine): honoured when STOPPED, kept for the end of a
    BACKOFF wait, ignored while FATAL (the driver refuses the caller until the cool-down ends)."""


@dataclass(frozen=True)
class StopRequested:
    pass


@dataclass(frozen=True)
class Spawned:
    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    reason: str
    permanent: bool  # e.g. the executable does not exist: retrying cannot help


@dataclass(frozen=True)
class ProbePassed:
    pass


@dataclass(frozen=True)
class Exited:
    pid: int
    returncode: int


@dataclass(frozen=True)
class TimerFired:
    kind: str  # "ready" | "grace" | "backoff" | "fatal"
    token: int


Input = StartRequested | StartWanted | StopRequested | Spawned | SpawnFailed | ProbePassed | Exited | TimerFired


# ---- effects ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spawn:
    pass


@dataclass(frozen=True)
class BeginProbe:
    pid: int


@dataclass(frozen=True)
class SignalGroup:
    signum: int


@dataclass(frozen=True)
class SetTimer:
    kind: str
    delay_s: float
    token: int


Effect = Spawn | BeginProbe | SignalGroup | SetTimer

StateListener = Callable[[Transition], None]


class ProcessMachine:
    def __init__(
        self,
        name: str,
        *,
        ready_timeout_s: float,
        stop_grace_s: float,
        max_failures: int,
        window_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        fatal_retry_s: float = 0.0,
        autorestart: bool = True,
        on_state: StateListener | None = None,
    ) -> None:
        self.name = name
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.max_failures = max_failures
        self.window_s = window_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.fatal_retry_s = fatal_retry_s
        self.autorestart = autorestart
        self.state = S.STOPPED
        self.fatal_retry_at: float | None = None  # when a FATAL engine's cool-down ends (None: never)
        self.backoff_until: float | None = None
        self._start_wanted = False
        self.pid: int | None = None
        self.restarts = 0  # starts that followed a failure, whoever asked for them
        self._failed_since_start = False
        self.last_error = ""
        self._failures: deque[float] = deque()
        self._token = 0
        self._on_state = on_state
        self._kill_sent = False

    # -- helpers --------------------------------------------------------------------------------
    def _set_state(self, new: ProcessState, reason: str = "", retry_at: float | None = None) -> None:
        old = self.state
        check_transition(self.name, old, new)
        self.state = new
        if new is not S.BACKOFF:
            self.backoff_until = None
        if new is not S.FATAL:
            self.fatal_retry_at = None
        if self._on_state is not None:
            self._on_state(Transition(self.name, old, new, reason, retry_at))

    def _timer(self, kind: str, delay: float) -> SetTimer:
        self._token += 1
        return SetTimer(kind, delay, self._token)

    def _go_fatal(self, now: float, reason: str) -> list[Effect]:
        self._start_wanted = False
        self.last_error = reason
        if self.fatal_retry_s <= 0:
            self._set_state(S.FATAL, f"{reason}; stays fatal until started by hand")
            return []
        timer = self._timer("fatal", self.fatal_retry_s)
        self.fatal_retry_at = now + self.fatal_retry_s
        self._set_state(S.FATAL, f"{reason}; retried in {self.fatal_retry_s:g}s", self.fatal_retry_at)
        return [timer]

    def _record_failure(self, now: float, reason: str) -> list[Effect]:
        self._failed_since_start = True
        self.last_error = reason
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.max_failures:
            return self._go_fatal(now, f"{reason}; {len(self._failures)} failures within {self.window_s:g}s")
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (len(self._failures) - 1))
        timer = self._timer("backoff", delay)
        self.backoff_until = now + delay
        self._set_state(S.BACKOFF, f"{reason}; retrying in {delay:g}s", self.backoff_until)
        return [timer]

    def _begin_start(self, reason: str) -> list[Effect]:
        if self._failed_since_start:
            self.restarts += 1
            self._failed_since_start = False
        self._set_state(S.STARTING, reason)
        self._kill_sent = False
        self._start_wanted = False
        return [Spawn()]

    def retry_in(self, now: float) -> float | None:
        """Seconds until this engine may be started on demand again: the rest of a BACKOFF wait or of
        a FATAL cool-down; None when fatal for good (until an operator starts it); 0 otherwise."""
        if self.state is S.FATAL:
            return None if self.fatal_retry_at is None else max(0.0, self.fatal_retry_at - now)
        if self.state is S.BACKOFF and self.backoff_until is not None:
            return max(0.0, self.backoff_until - now)
        return 0.0

    # -- the transition function -----------------------------------------------------------------
    def handle(self, event: Input, now: float) -> list[Effect]:
        st = self.state
        if isinstance(event, StartRequested):
            if st is S.STOPPED:
                return self._begin_start("start requested")
            if st is S.FATAL:
                self._token += 1  # cancels the cool-down timer
                self._failures.clear()
                return self._begin_start("start requested after fatal")
            if st is S.BACKOFF:
                # An explicit start skips the remaining backoff wait.
                self._token += 1
                return self._begin_start("start requested during backoff")
            return []
        if isinstance(event, StartWanted):
            if st is S.STOPPED:
                return self._begin_start("start wanted")
            if st is S.BACKOFF:
                self._start_wanted = True  # the backoff timer starts it
            return []
        if isinstance(event, StopRequested):
            if st in (S.STARTING, S.READY):
                self._set_state(S.STOPPING, "stop requested")
                if self.pid is None:  # spawn still pending: nothing to signal yet
                    return [self._timer("grace", self.stop_grace_s)]
                return [SignalGroup(signal.SIGTERM), self._timer("grace", self.stop_grace_s)]
            if st in (S.BACKOFF, S.FATAL):
                self._token += 1
                self._start_wanted = False
                self._set_state(S.STOPPED, "stop requested")
            return []
        if isinstance(event, Spawned):
            if st is S.STARTING:
                self.pid = event.pid
                return [BeginProbe(event.pid), self._timer("ready", self.ready_timeout_s)]
            if st is S.STOPPING:
                self.pid = event.pid
                return [SignalGroup(signal.SIGTERM)]
            return []
        if isinstance(event, SpawnFailed):
            if self.pid is not None or st not in (S.STARTING, S.STOPPING):
                return []  # not about the pending spawn: a running process is not forgotten
            if st is S.STOPPING:
                self._set_state(S.STOPPED, "stopped before spawn")
                return []
            if event.permanent:
                self.last_error = event.reason
                return self._go_fatal(now, event.reason)
            return self._record_failure(now, event.reason)
        if isinstance(event, ProbePassed):
            if st is S.STARTING and self.pid is not None:  # a probe answered before our spawn is not ours
                self._token += 1  # cancels the ready timer
                self._set_state(S.READY, "readiness probe passed")
            return []
        if isinstance(event, Exited):
            if event.pid != self.pid:
                return []
            self.pid = None
            if st is S.STOPPING:
                self._token += 1
                self._set_state(S.STOPPED, f"exited with {event.returncode}")
                return []
            if st in (S.STARTING, S.READY):
                self._token += 1
                if st is S.STARTING and self._kill_sent:
                    reason = f"not ready within {self.ready_timeout_s:g}s; killed"
                elif st is S.STARTING:
                    reason = f"exited during start with code {event.returncode}"
                else:
                    reason = f"exited unexpectedly with code {event.returncode}"
                return self._record_failure(now, reason)
            return []
        if isinstance(event, TimerFired):
            if event.token != self._token:
                return []  # stale timer
            if event.kind == "ready" and st is S.STARTING:
                # Not ready in time: kill the group now; the exit is then counted as a failure.
                self.last_error = f"not ready within {self.ready_timeout_s:g}s"
                self._kill_sent = True
                return [SignalGroup(signal.SIGKILL)]
            if event.kind == "grace" and st is S.STOPPING:
                self._kill_sent = True
                if self.pid is None:
                    self._set_state(S.STOPPED, "stopped")
                    return []
                return [SignalGroup(signal.SIGKILL)]
            if event.kind == "backoff" and st is S.BACKOFF:
                if self.autorestart or self._start_wanted:
                    return self._begin_start("restarting after backoff")
                self._set_state(S.STOPPED, "backoff over; starts when next needed")
                return []
            if event.kind == "fatal" and st is S.FATAL:
                self._failures.clear()
                if self.autorestart:
                    return self._begin_start(f"retrying after the {self.fatal_retry_s:g}s fatal cool-down")
                self._set_state(S.STOPPED, f"fatal cool-down of {self.fatal_retry_s:g}s over; starts when next needed")
                return []
            return []
        raise TypeError(f"unknown input {event!r}")
