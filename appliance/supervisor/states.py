"""The engine process states and the table of allowed transitions (supervisord's model).

STOPPED --start--> STARTING --probe ok--> READY
STARTING/READY --exit or ready timeout--> BACKOFF --retry timer--> STARTING
BACKOFF --too many failures in the window--> FATAL
STARTING/READY/BACKOFF --stop--> STOPPING --exited--> STOPPED   (BACKOFF stops directly)
STARTING --spawn impossible (no executable)--> FATAL
FATAL --start (operator)--> STARTING ; FATAL --stop/reset--> STOPPED
"""

from __future__ import annotations

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
    S.READY: frozenset({S.BACKOFF, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.FATAL}),
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
