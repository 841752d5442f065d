"""Pure policy functions: victim choice, release tiers, switch triggers, drain estimates."""

from __future__ import annotations

import pytest

from appliance.scheduler import GB, Footprints, MemoryBudget, ModelKind, PolicySettings, Sleep, Stop, Unload
from appliance.scheduler.history import ServiceHistory
from appliance.scheduler.policy import (
    HostView,
    SwitchView,
    VictimView,
    choose_release,
    choose_victims,
    gdsf_value,
    should_switch,
)

from .residency_fakes import profile


def v(model: str, gb: float, value: float, busy: bool = False, queued: int = 0) -> VictimView:
    return VictimView(model, int(gb * GB), value, busy, queued)


def test_nothing_to_evict_when_it_fits() -> None:
    assert choose_victims(5 * GB, 6 * GB, [v("a", 10, 1.0)]) == ()


def test_no_victim_set_when_even_all_is_not_enough() -> None:
    assert choose_victims(30 * GB, 5 * GB, [v("a", 10, 1.0), v("b", 10, 1.0)]) is None


def test_lowest_greedy_dual_value_is_evicted() -> None:
    victims = choose_victims(10 * GB, 2 * GB, [v("a", 10, 5.0), v("b", 10, 1.0), v("c", 10, 3.0)])
    assert victims == ("b",)


def test_idle_victims_are_preferred_to_busy_ones_and_queued_ones_last() -> None:
    cands = [v("busy", 10, 0.1, busy=True), v("queued", 10, 0.1, queued=2), v("idle", 10, 9.0)]
    assert choose_victims(10 * GB, 0, cands) == ("idle",)
    assert choose_victims(20 * GB, 0, cands) == ("busy", "idle")


def test_one_large_victim_beats_two_small_valuable_ones() -> None:
    cands = [v("big", 12, 2.0), v("s1", 6, 1.5), v("s2", 6, 1.5)]
    assert choose_victims(12 * GB, 0, cands) == ("big",)


def test_greedy_dual_value_grows_with_frequency_and_reload_cost_and_shrinks_with_size() -> None:
    small = profile("s", 2)
    big = profile("b", 20)
    assert gdsf_value(0.0, 10, small, 2 * GB) > gdsf_value(0.0, 10, big, 20 * GB)
    assert gdsf_value(0.0, 10, small, 2 * GB) > gdsf_value(0.0, 1, small, 2 * GB)
    assert gdsf_value(5.0, 1, small, 2 * GB) == pytest.approx(5.0 + gdsf_value(0.0, 1, small, 2 * GB))
    no_sleep = profile("n", 2, supports_sleep=False, supports_unload=False)
    assert gdsf_value(0.0, 1, no_sleep, 2 * GB) > gdsf_value(0.0, 1, small, 2 * GB)  # cold start is dearer


def test_release_sleeps_while_host_ram_allows() -> None:
    assert choose_release(profile("a", 10), 1.0, 10 * GB, []).release == Sleep("a")


def test_release_drops_cheaper_host_copies_first() -> None:
    hosts = [HostView("cheap", 8 * GB, 0.5, stop_only=True), HostView("dear", 8 * GB, 9.0, stop_only=False)]
    plan = choose_release(profile("a", 10), 1.0, 4 * GB, hosts)
    assert plan.release == Sleep("a") and plan.drop_from_host == (Stop("cheap"),)


def test_release_goes_to_disk_when_host_copies_are_worth_more() -> None:
    hosts = [HostView("dear", 8 * GB, 9.0, stop_only=False)]
    assert choose_release(profile("a", 10), 1.0, 4 * GB, hosts).release == Unload("a")
    no_unload = profile("b", 10, supports_unload=False)
    assert choose_release(no_unload, 1.0, 4 * GB, hosts).release == Stop("b")
    no_sleep = profile("c", 10, supports_sleep=False)
    assert choose_release(no_sleep, 1.0, 100 * GB, []).release == Unload("c")


def test_switch_triggers() -> None:
    settings = PolicySettings()
    waiting = SwitchView(credit_s=5.0, max_wait_s=30.0, urgent=False)
    assert should_switch(waiting, [v("r", 10, 1.0)], 0.0, settings)  # resident idle
    assert not should_switch(waiting, [v("r", 10, 1.0, busy=True)], 0.0, settings)  # protected batch
    assert not should_switch(waiting, [v("r", 10, 1.0, queued=3)], 0.0, settings)
    starving = SwitchView(credit_s=30.0, max_wait_s=30.0, urgent=False)
    assert should_switch(starving, [v("r", 10, 1.0, busy=True, queued=3)], 50.0, settings)  # max_wait wins
    pinned = SwitchView(credit_s=0.0, max_wait_s=30.0, urgent=True)
    assert should_switch(pinned, [v("r", 10, 1.0, busy=True)], 50.0, settings)


def test_cheap_drain_trigger_is_optional() -> None:
    waiting = SwitchView(credit_s=1.0, max_wait_s=30.0, urgent=False)
    busy = [v("r", 10, 1.0, busy=True)]
    priced = PolicySettings(drain_below_s=3.0)
    assert should_switch(waiting, busy, 2.0, priced)
    assert not should_switch(waiting, busy, 8.0, priced)
    assert not should_switch(waiting, [v("r", 10, 1.0, busy=True, queued=1)], 0.5, priced)
    assert not should_switch(waiting, busy, 2.0, PolicySettings())


def test_residual_of_heavy_tailed_jobs_grows_with_age() -> None:
    h = ServiceHistory(prior_s=10.0)
    assert h.residual(4.0) == pytest.approx(6.0)  # prior until something is observed
    for d in [1.0, 2.0, 3.0, 4.0, 60.0]:
        h.record(d)
    assert h.mean() == pytest.approx(14.0)
    assert h.residual(0.5) == pytest.approx(14.0 - 0.5)
    assert h.residual(5.0) == pytest.approx(55.0)  # only the 60 s job ran this long
    assert h.residual(61.0) == 0.0


def test_history_keeps_a_bounded_sample() -> None:
    h = ServiceHistory(prior_s=1.0, size=3)
    for d in [100.0, 1.0, 1.0, 1.0]:
        h.record(d)
    assert len(h) == 3 and h.mean() == pytest.approx(1.0)


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="only LLM"):
        profile("img", 5, ModelKind.IMAGE, preemptible=True)
    with pytest.raises(ValueError, match="concurrency"):
        profile("a", 5, concurrency=0)


def test_memory_budget_from_the_gpu_total() -> None:
    budget = MemoryBudget.from_gpu(24 * GB, int(1.5 * GB), 40 * GB)
    assert budget.vram_bytes == int(22.5 * GB) and budget.host_bytes == 40 * GB
    with pytest.raises(ValueError):
        MemoryBudget.from_gpu(24 * GB, 25 * GB, 0)


def test_footprint_peak_only_grows_until_reset() -> None:
    f = Footprints([profile("a", 10)])
    assert f.of("a") == 10 * GB and not f.is_measured("a")
    assert f.observe("a", 6 * GB) and f.of("a") == 6 * GB  # a wrong estimate is replaced both ways
    assert not f.observe("a", 5 * GB) and f.of("a") == 6 * GB
    assert f.observe("a", 7 * GB) and f.of("a") == 7 * GB
    assert not f.observe("unknown", 1)
    f.reset_peak("a")
    assert f.of("a") == 10 * GB and f.measured() == {}


def test_idle_switch_hold_delays_only_the_idle_trigger() -> None:
    idle = [v("r", 10, 1.0)]
    held = PolicySettings(idle_switch_hold_s=4.0)
    young = SwitchView(credit_s=1.0, max_wait_s=30.0, urgent=False)
    assert not should_switch(young, idle, 0.0, held)
    assert should_switch(SwitchView(credit_s=4.0, max_wait_s=30.0, urgent=False), idle, 0.0, held)
    assert should_switch(SwitchView(credit_s=1.0, max_wait_s=30.0, urgent=True), idle, 0.0, held)  # pinned
    assert should_switch(young, idle, 0.0, PolicySettings())
