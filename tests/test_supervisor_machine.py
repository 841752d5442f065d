"""The supervision machine driven synchronously: a fake launcher and a fake clock, no sleeps."""

from __future__ import annotations

import random
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
    StartWanted,
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
    machine = ProcessMachine("eng", on_state=lambda t: h.transitions.append((t.old, t.new)),
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


# ---- crash loops (issue 13 item 2) -------------------------------------------------------------
def _kill_until_fatal(h: Harness, last_in: S) -> None:
    """Crash the engine (max_failures=3) twice while ready, then a third time in `last_in`."""
    h.feed(StartRequested())
    for _ in range(2):
        h.feed(ProbePassed())
        h.feed(Exited(h.machine.pid or 0, -9))
        assert h.machine.state is S.BACKOFF
        h.advance(h.timers[-1].delay_s, "backoff")
    assert h.machine.state is S.STARTING
    if last_in is S.READY:
        h.feed(ProbePassed())
    assert h.machine.state is last_in
    h.feed(Exited(h.machine.pid or 0, -9))


@pytest.mark.parametrize("last_in", [S.READY, S.STARTING])
def test_kill_loop_reaches_fatal_through_a_legal_transition(last_in: S) -> None:
    """Regression: the window's last crash while READY raised `illegal transition ready -> fatal`
    and left the engine READY with no process."""
    h = make(max_failures=3, fatal_retry_s=30.0)
    _kill_until_fatal(h, last_in)
    assert h.machine.state is S.FATAL and h.machine.pid is None
    assert (last_in, S.FATAL) in h.transitions
    assert "3 failures within 60s" in h.machine.last_error
    assert h.machine.retry_in(h.now) == 30.0


def test_a_readiness_timeout_as_the_last_failure_is_fatal_too() -> None:
    h = make(max_failures=1)
    h.feed(StartRequested())
    h.advance(10.0, "ready")
    h.feed(Exited(101, -9))
    assert h.machine.state is S.FATAL and h.machine.pid is None


def test_a_kill_while_stopping_is_a_stop_not_a_failure() -> None:
    h = make(max_failures=1)
    h.feed(StartRequested())
    h.feed(ProbePassed())
    h.feed(StopRequested())
    h.feed(Exited(101, -9))
    assert h.machine.state is S.STOPPED and not h.machine._failures


def test_a_kill_of_the_old_process_during_backoff_changes_nothing() -> None:
    h = make()
    h.feed(StartRequested())
    h.feed(ProbePassed())
    h.feed(Exited(101, -9))
    h.feed(Exited(101, -9))  # reported twice (the reaper and a stale watcher)
    assert h.machine.state is S.BACKOFF and len(h.machine._failures) == 1


def test_fatal_cool_down_restarts_an_autorestart_engine_with_a_clean_history() -> None:
    h = make(max_failures=2, fatal_retry_s=30.0)
    h.feed(StartRequested())
    h.feed(Exited(101, 1))
    h.advance(1.0, "backoff")
    h.feed(Exited(102, 1))
    assert h.machine.state is S.FATAL
    h.feed(StartWanted())  # a request during the cool-down does not start it
    assert h.machine.state is S.FATAL
    h.advance(30.0, "fatal")
    assert h.machine.state is S.STARTING and h.machine.pid == 103
    h.feed(Exited(103, 1))  # one failure after the cool-down: a backoff, not fatal again
    assert h.machine.state is S.BACKOFF


def test_fatal_cool_down_of_an_on_demand_engine_ends_stopped_and_a_request_starts_it() -> None:
    h = make(max_failures=1, fatal_retry_s=30.0)
    h.machine.autorestart = False
    h.feed(StartRequested())
    h.feed(Exited(101, 1))
    assert h.machine.state is S.FATAL
    h.advance(30.0, "fatal")
    assert h.machine.state is S.STOPPED and h.machine.pid is None
    h.feed(StartWanted())
    assert h.machine.state is S.STARTING and h.machine.pid == 102


def test_without_a_cool_down_fatal_waits_for_an_operator() -> None:
    h = make(max_failures=1, fatal_retry_s=0.0)
    h.feed(StartRequested())
    h.feed(Exited(101, 1))
    assert h.machine.state is S.FATAL and not [t for t in h.timers if t.kind == "fatal"]
    assert h.machine.retry_in(h.now) is None
    h.feed(StartRequested())  # the operator
    assert h.machine.state is S.STARTING


def test_an_on_demand_engine_is_not_restarted_after_a_backoff_unless_wanted() -> None:
    h = make()
    h.machine.autorestart = False
    h.feed(StartRequested())
    h.feed(ProbePassed())
    h.feed(Exited(101, -9))
    h.advance(1.0, "backoff")
    assert h.machine.state is S.STOPPED and h.machine.restarts == 0
    h.feed(StartWanted())
    assert h.machine.restarts == 1  # started on demand after the crash: a restart all the same
    h.feed(ProbePassed())
    h.feed(Exited(102, -9))
    h.feed(StartWanted())  # wanted during the backoff: its end starts the engine
    assert h.machine.state is S.BACKOFF
    h.advance(2.0, "backoff")
    assert h.machine.state is S.STARTING and h.machine.pid == 103


def test_random_inputs_never_break_the_table_nor_leave_a_state_without_its_process() -> None:
    """Any order of starts, stops, kills, spawn results, probes and (stale) timers: every transition
    is in the table, READY always has a process and STOPPED/BACKOFF/FATAL never do (it found a probe
    answered before the spawn making a READY without a process)."""
    seen: list[tuple[S, S]] = []
    for seed in range(60):
        _random_walk(random.Random(seed), seen)
    for old, new in seen:
        assert new in ALLOWED[old]
    assert {new for _, new in seen} == set(S)  # the walks visit every state, FATAL included


def _random_walk(rng: random.Random, seen: list[tuple[S, S]]) -> None:
    m = ProcessMachine("eng", ready_timeout_s=10.0, stop_grace_s=5.0, max_failures=3, window_s=60.0,
                       backoff_initial_s=1.0, backoff_max_s=8.0, fatal_retry_s=rng.choice([0.0, 30.0]),
                       autorestart=rng.random() < 0.5, on_state=lambda t: seen.append((t.old, t.new)))
    now, next_pid, spawn_pending = 0.0, 100, False
    timers: list[SetTimer] = []
    for _ in range(300):
        choice = rng.randrange(9)
        event: Input
        if choice == 0:
            event = StartRequested()
        elif choice == 1:
            event = StartWanted()
        elif choice == 2:
            event = StopRequested()
        elif choice == 3 and spawn_pending:
            next_pid += 1
            spawn_pending, event = False, Spawned(next_pid)
        elif choice == 4:  # also a stale report of an earlier spawn
            spawn_pending, event = False, SpawnFailed("no port", permanent=rng.random() < 0.2)
        elif choice == 5:
            event = ProbePassed()
        elif choice == 6:
            event = Exited(rng.choice([m.pid or next_pid, next_pid - 1]), -9)
        elif timers:
            t = rng.choice(timers[-4:])
            event = TimerFired(t.kind, t.token)
        else:
            continue
        now += rng.random() * 20
        for eff in m.handle(event, now):
            if isinstance(eff, Spawn):
                spawn_pending = True
            elif isinstance(eff, SetTimer):
                timers.append(eff)
        if m.state is S.READY:
            assert m.pid is not None
        if m.state in (S.STOPPED, S.BACKOFF, S.FATAL):
            assert m.pid is None
