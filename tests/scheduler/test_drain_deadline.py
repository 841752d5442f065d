"""The drain deadline: one hung engine request must not hold its model's lease forever.

A switch's victim drains (admits nothing new, finishes what runs). Once the waiting model's head
has waited its max_wait plus `drain_deadline_s`, a victim still busy has its resumable streams
preempted, and if work is left its engine is stopped and that work abandoned (`ForceStop`).
"""

from __future__ import annotations

import pytest

from appliance.config import parse_config
from appliance.scheduler import (
    Dispatch,
    ForceStop,
    ModelKind,
    PolicySettings,
    Preempt,
    Sleep,
    Tier,
    Wake,
)
from appliance.sim.calibration import Calibration
from appliance.sim.policies import simulate
from appliance.sim.workloads import RequestSpec, Workload

from .residency_fakes import Driver, box, profile

HOST = dict.fromkeys(("llm", "image", "speech"), Tier.HOST)
DEADLINE = 100.0


def chat_running(*, resumable: bool = False, **settings: object) -> Driver:
    """The LLM runs c1 (60 s max_wait); an image (30 s max_wait) arrives at 2 s and waits for it."""
    profiles = box()
    if resumable:
        profiles[0] = profile("llm", 21.7, ModelKind.LLM, host_gb=19.3, concurrency=8, max_wait_s=60.0,
                              preemptible=True)
    d = Driver.create(profiles, tiers=HOST,
                      settings=PolicySettings(drain_deadline_s=DEADLINE, **settings))  # type: ignore[arg-type]
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    assert d.arrive("i1", "image", 2.0) == []
    return d


def test_a_victim_hung_past_max_wait_plus_the_deadline_is_stopped() -> None:
    """Before the deadline existed the LLM drained forever and the image never ran."""
    d = chat_running()
    assert d.tick(32.0) == []  # the image's max_wait: the switch starts, the LLM drains
    assert d.core.snapshot().plan_target == "image"
    assert d.core.next_deadline() == pytest.approx(32.0 + DEADLINE)
    assert d.tick(32.0 + DEADLINE - 0.1) == []
    assert d.tick(32.0 + DEADLINE) == [ForceStop("llm", ("c1",))]
    assert d.released("llm", 133.0) == [Wake("image")]
    assert d.ready("image", 134.0) == [Dispatch("image", "i1")]
    assert d.done("c1", 135.0) == []  # the abandoned request's end is ignored
    view = d.core.snapshot().models["llm"]
    assert (view.tier, view.engine_up, view.in_flight) == (Tier.DISK, False, 0)


def test_resumable_streams_are_preempted_at_the_deadline_even_with_preemption_off() -> None:
    """With `preemption` off nothing is preempted at the switch (the LLM drains), but past the
    deadline a stream that can be resumed is preempted rather than lost with a stopped engine."""
    d = chat_running(resumable=True)
    assert d.tick(32.0) == []
    assert d.tick(32.0 + DEADLINE) == [Preempt("llm", "c1"), Sleep("llm")]
    d.released("llm", 132.1)
    d.ready("image", 133.0)
    d.done("i1", 139.0)
    d.released("image", 139.1)
    assert d.ready("llm", 140.0) == [Dispatch("llm", "c1", resume=True)]


def test_work_that_cannot_be_resumed_stops_the_engine_after_the_rest_is_preempted() -> None:
    d = chat_running(resumable=True)
    d.arrive("tools", "llm", 2.5, preemptible=False)  # e.g. a tool call: the gateway cannot resume it
    assert d.dispatched() == ["c1", "tools"]
    d.tick(32.0)
    assert d.tick(32.0 + DEADLINE) == [Preempt("llm", "c1"), ForceStop("llm", ("tools",))]
    d.released("llm", 133.0)
    d.ready("image", 134.0)
    d.done("i1", 140.0)
    d.released("image", 140.1)
    # c1 waits first in the LLM's queue and resumes once the engine is started again.
    assert d.core.snapshot().models["llm"].queued == 1


def test_a_switch_made_before_max_wait_counts_its_deadline_from_max_wait() -> None:
    """A cheap-drain switch (`drain_below_s`) starts before the image's max_wait; its victims get
    the same time as any other: until the head has waited max_wait plus the deadline."""
    d = chat_running(drain_below_s=1e9)
    assert d.core.snapshot().plan_target == "image"  # the switch started at once, at 2 s
    assert d.tick(32.0) == []
    assert d.core.next_deadline() == pytest.approx(2.0 + 30.0 + DEADLINE)
    assert d.tick(2.0 + 30.0 + DEADLINE - 0.1) == []
    assert d.tick(2.0 + 30.0 + DEADLINE) == [ForceStop("llm", ("c1",))]


def test_a_drain_that_ends_in_time_is_not_touched() -> None:
    d = chat_running()
    d.tick(32.0)
    assert d.done("c1", 40.0) == [Sleep("llm")]
    assert d.core.next_deadline() != pytest.approx(32.0 + DEADLINE)
    assert d.of(ForceStop) == [] and d.of(Preempt) == []


def test_the_configured_deadline_defaults_to_the_policy_default() -> None:
    assert parse_config({}).scheduler.drain_deadline_s == PolicySettings().drain_deadline_s
    assert parse_config({"scheduler": {"drain_deadline_s": 45}}).scheduler.drain_deadline_s == 45.0


def test_the_simulator_abandons_a_hung_request_and_serves_the_image() -> None:
    """A chat that would run 10,000 s holds the LLM; the image behind it is served once the
    deadline passes, and the chat is counted as abandoned (not as incomplete)."""
    cal = Calibration()
    roots = (
        RequestSpec("hung", "llm", 10.0, 10_000.0, 10, 330_000),
        RequestSpec("img", "image", 20.0, 6.0),
    )
    w = Workload("hung", 0.0, 0, roots, 20_000.0, 0.0)
    s = simulate("ours", w, cal, settings=PolicySettings(drain_deadline_s=60.0))
    assert s.abandoned == 1
    assert s.incomplete == 0
    assert len(s.latency["image"]) == 1
    assert s.latency["image"][0] < 10_000.0 - 20.0  # served before the chat could have ended
