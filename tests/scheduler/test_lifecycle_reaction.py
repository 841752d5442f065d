"""What a supervisor transition means to the residency manager (scheduler.lifecycle.react), for every
transition in the supervisor's table."""

from __future__ import annotations

import pytest

from appliance.scheduler.lifecycle import Reaction, react
from appliance.supervisor.states import ALLOWED, ProcessState, Transition

S = ProcessState
ALL = [(old, new) for old in S for new in sorted(ALLOWED[old])]


@pytest.mark.parametrize(("old", "new"), ALL)
def test_every_transition_has_one_meaning(old: S, new: S) -> None:
    t = Transition("vllm", old, new, "why")
    for ours_start in (False, True):
        for ours_stop in (False, True):
            r = react(t, started_by_us=ours_start, stopped_by_us=ours_stop)
            # the models' residency is lost exactly when a serving (or stopping) process is gone
            # without the manager having stopped it
            lost = old in (S.READY, S.STOPPING) and new in (S.BACKOFF, S.FATAL, S.STOPPED)
            assert r.exited is (lost and not (new is S.STOPPED and ours_stop))
            assert r.park is (new is S.READY and not ours_start)
            assert r.fail_waiting is (new is S.FATAL)


def test_crash_of_a_ready_engine_into_fatal_loses_residency_and_fails_the_queue() -> None:
    """Regression: the manager read `ev.data.get("from") == "ready"` off the lossy EventBus; the
    crash that makes an engine fatal must both drop its models and answer its waiting requests."""
    r = react(Transition("vllm", S.READY, S.FATAL, "exited; 5 failures within 300s", 600.0),
              started_by_us=False, stopped_by_us=False)
    assert r == Reaction(exited=True, park=False, fail_waiting=True)


def test_the_end_of_a_backoff_or_cool_down_is_not_a_crash() -> None:
    for old in (S.BACKOFF, S.FATAL):
        assert react(Transition("vllm", old, S.STOPPED, ""), started_by_us=False, stopped_by_us=False) == Reaction()
