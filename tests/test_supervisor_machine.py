"""The supervision machine driven synchronously: a fake launcher and a fake clock, no sleeps."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import pytest

from appliance.supervisor.machine import (
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
    StopRequested,
    TimerFired,
)
from appliance.supervisor.states import ALLOWED, IllegalTransition, ProcessState, check_transition

S = ProcessState


@dataclass
class Harness:
    """A fake launcher (hands out pids, records signals) and a fake clock with pending timers."""

    machine: ProcessMachine
    now: float = 0.0
    next_pid: int = 100
    signals: list[int] = field(default_factory=list)
    timers: list[SetTimer] = field(default_factory=list)
    transitions: list[tuple[S, S]] = field(default_factory=list)
    probing: int | None = None

    def feed(self, event: Input) -> list[Effect]:
        effects = self.machine.handle(event, self.now)
        for eff in effects:
            if isinstance(eff, Spawn):
                self.next_pid += 1
                effects += self.feed(Spawned(self.next_pid))
            elif isinstance(eff, SignalGroup):
                self.signals.append(eff.signum)
            elif isinstance(eff, SetTimer):
                self.timers.append(eff)
            elif isinstance(eff, BeginProbe):
                self.probing = eff.pid
        return effects

    def advance(self, seconds: float, kind: str) -> list[Effect]:
        """Move the clock and fire the latest timer of `kind`."""
        self.now += seconds
        timer = [t for t in self.timers if t.kind == kind][-1]
        return self.feed(TimerFired(timer.kind, timer.token))


def make(**kw: float) -> Harness:
    h: Harness
    params = dict(ready_timeout_s=10.0, stop_grace_s=5.0, max_failures=3, window_s=60.0,
                  backoff_initial_s=1.0, backoff_max_s=8.0)
    params.update(kw)
    machine = ProcessMachine("eng", on_state=lambda o, n, r: h.transitions.append((o, n)),
                             **params)  # type: ignore[arg-type]
    h = Harness(machine)
    return h


def test_every_transition_outside_the_table_is_refused() -> None:
    for old in S:
        for new in S:
            if new in ALLOWED[old]:
                check_transition("x", old, new)
            else:
                with pytest.raises(IllegalTransition):
                    check_transition("x", old, new)


def test_start_probe_ready_then_staged_stop_with_sigkill_after_grace() -> None:
    h = make()
    h.feed(StartRequested())
    assert h.machine.state is S.STARTING and h.probing == 101
    h.feed(ProbePassed())
    assert h.machine.state is S.READY
    h.feed(StopRequested())
    assert h.machine.state is S.STOPPING and h.signals == [signal.SIGTERM]
    h.advance(5.0, "grace")  # the engine ignored SIGTERM
    assert h.signals == [signal.SIGTERM, signal.SIGKILL]
    h.feed(Exited(101, -9))
    assert h.machine.state is S.STOPPED
    assert h.transitions == [(S.STOPPED, S.STARTING), (S.STARTING, S.READY), (S.READY, S.STOPPING),
                             (S.STOPPING, S.STOPPED)]


def test_prompt_exit_on_sigterm_cancels_the_grace_timer() -> None:
    h = make()
    h.feed(StartRequested())
    h.feed(ProbePassed())
    h.feed(StopRequested())
    h.feed(Exited(101, 0))
    assert h.machine.state is S.STOPPED
    h.advance(5.0, "grace")  # stale timer: no SIGKILL to a group that is gone
    assert h.signals == [signal.SIGTERM]


def test_crash_restarts_with_exponential_backoff_then_fatal() -> None:
    h = make(max_failures=3)
    h.feed(StartRequested())
    h.feed(ProbePassed())
    h.feed(Exited(101, 1))
    assert h.machine.state is S.BACKOFF and h.timers[-1].delay_s == 1.0
    h.advance(1.0, "backoff")
    assert h.machine.state is S.STARTING and h.machine.pid == 102
    h.feed(Exited(102, 1))
    assert h.machine.state is S.BACKOFF and h.timers[-1].delay_s == 2.0
    h.advance(2.0, "backoff")
    h.feed(Exited(103, 1))
    assert h.machine.state is S.FATAL
    assert "exited during start" in h.machine.last_error
    assert h.machine.restarts == 2


def test_failures_outside_the_window_do_not_accumulate() -> None:
    h = make(max_failures=2, window_s=10.0)
    h.feed(StartRequested())
    h.feed(ProbePassed())
    h.feed(Exited(101, 1))
    h.advance(1.0, "backoff")
    h.feed(ProbePassed())
    h.now += 100.0  # long healthy run
    h.feed(Exited(102, 1))
    assert h.machine.state is S.BACKOFF  # the first failure has left the window


def test_readiness_timeout_kills_the_group_and_counts_as_failure() -> None:
    h = make()
    h.feed(StartRequested())
    h.advance(10.0, "ready")
    assert h.signals == [signal.SIGKILL]
    h.feed(Exited(101, -9))
    assert h.machine.state is S.BACKOFF
    assert "not ready within 10s" in h.machine.last_error


def test_probe_after_ready_timeout_is_ignored_and_stale_ready_timer_is_harmless() -> None:
    h = make()
    h.feed(StartRequested())
    h.feed(ProbePassed())
    h.advance(10.0, "ready")  # the ready timer of a process that became ready: stale
    assert h.signals == [] and h.machine.state is S.READY


def test_missing_executable_is_fatal_at_once() -> None:
    h = make()
    h.machine.handle(StartRequested(), 0.0)
    h.feed(SpawnFailed("executable 'vllm' not found", permanent=True))
    assert h.machine.state is S.FATAL and "not found" in h.machine.last_error


def test_start_after_fatal_resets_the_failure_history() -> None:
    h = make(max_failures=1)
    h.feed(StartRequested())
    h.feed(Exited(101, 1))
    assert h.machine.state is S.FATAL
    h.feed(StartRequested())
    assert h.machine.state is S.STARTING
    h.feed(ProbePassed())
    assert h.machine.state is S.READY


def test_stop_during_backoff_goes_straight_to_stopped() -> None:
    h = make()
    h.feed(StartRequested())
    h.feed(Exited(101, 1))
    h.feed(StopRequested())
    assert h.machine.state is S.STOPPED
    h.advance(1.0, "backoff")  # stale: no restart
    assert h.machine.state is S.STOPPED


def test_exit_of_an_old_pid_is_ignored() -> None:
    h = make()
    h.feed(StartRequested())
    h.feed(Exited(999, 1))
    assert h.machine.state is S.STARTING
