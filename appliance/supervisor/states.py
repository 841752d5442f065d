"""The engine process states and the table of allowed transitions (supervisord's model).

STOPPED --start--> STARTING --probe ok--> READY
STARTING/READY --exit or ready timeout, failures left in the window--> BACKOFF
STARTING/READY --exit or ready timeout, the window's last failure--> FATAL
BACKOFF --retry timer--> STARTING (restarts on its own, or a start is waiting) or STOPPED (restarts on demand)
STARTING/READY --stop--> STOPPING --exited--> STOPPED   (BACKOFF and FATAL stop directly)
STARTING --spawn impossible (no executable)--> FATAL
FATAL --cool-down over--> STARTING (restarts on its own) or STOPPED (restarts on demand)
FATAL --start (operator)--> STARTING

A crash counts against the failure window in whichever state the process died (starting or ready),
so a crash-looping engine reaches FATAL from either in one legal step. No state but STARTING and
STOPPING may exist without a process (those two only while a spawn is pending).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ProcessState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FATAL = "fatal"


S = ProcessState

ALLOWED: dict[ProcessState, frozenset[ProcessState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.READY, S.BACKOFF, S.STOPPING, S.FATAL}),
    S.READY: frozenset({S.BACKOFF, S.STOPPING, S.FATAL}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
}

RUNNING = frozenset({S.STARTING, S.READY, S.STOPPING})


class IllegalTransition(RuntimeError):
    def __init__(self, name: str, old: ProcessState, new: ProcessState) -> None:
        super().__init__(f"{name}: illegal transition {old.value} -> {new.value}")
        self.old = old
        self.new = new


def check_transition(name: str, old: ProcessState, new: ProcessState) -> None:
    if new not in ALLOWED[old]:
        raise IllegalTransition(name, old, new)


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one engine's process, as the supervisor reports it to its listeners
    (the residency manager, the event bus): typed, delivered synchronously and never dropped.

    `retry_at` (the supervisor's clock) is set when the machine will act by itself later: the end of
    a BACKOFF wait or of a FATAL cool-down; None when nothing is scheduled.
    """

    engine: str
    old: ProcessState
    new: ProcessState
    reason: str
    retry_at: float | None = None

    @property
    def process_lost(self) -> bool:
        """A process that was serving (READY) or being stopped is gone."""
        return self.old in (ProcessState.READY, ProcessState.STOPPING) and self.new not in RUNNING
