"""Measured transition times (scheduler.timings) and how the core takes them (CostsMeasured)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.scheduler import CostsMeasured, Reject, SwapCosts, Tier
from appliance.scheduler.statefile import StateFile
from appliance.scheduler.timings import KEEP, TransitionTimes

from .residency_fakes import COSTS, Driver, profile

ESTIMATE = SwapCosts(wake_s=1.1, cold_start_s=90.0, load_s=5.0, release_s=0.05)


def test_medians_of_the_last_samples_replace_the_estimates_they_measured() -> None:
    t = TransitionTimes()
    assert t.costs("llm", ESTIMATE) == ESTIMATE
    for s in (0.9, 1.3, 0.7):
        t.record("llm", "wake", s)
    t.record("llm", "release", 0.2)
    assert t.median("llm", "wake") == 0.9
    assert t.costs("llm", ESTIMATE) == replace(ESTIMATE, wake_s=0.9, release_s=0.2)
    for _ in range(KEEP):
        t.record("llm", "wake", 2.0)
    assert t.median("llm", "wake") == 2.0  # only the last KEEP count
    assert t.medians() == {"llm": {"wake": 2.0, "release": 0.2}}


def test_what_is_not_a_duration_is_not_recorded() -> None:
    t = TransitionTimes()
    for bad in (math.nan, -1.0, math.inf):
        t.record("img", "start", bad)
    assert t.median("img", "start") is None
    with pytest.raises(ValueError, match="unknown transition"):
        t.record("img", "teleport", 1.0)


def test_the_file_survives_a_restart_and_a_bad_one_counts_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "data" / "transitions.json"
    t = TransitionTimes()
    t.record("voice", "start", 12.5)
    t.record("voice", "wake", 0.12)
    StateFile(path).save(t.as_mapping())  # as the residency manager keeps them

    def reloaded() -> TransitionTimes:
        return TransitionTimes.from_mapping(StateFile(path).load())

    assert reloaded().medians() == {"voice": {"start": 12.5, "wake": 0.12}}
    path.write_text(json.dumps({"voice": {"wake": [0.1, "x", True, None], "nonsense": [1]}, "b": 3}))
    assert reloaded().medians() == {"voice": {"wake": 0.1}}
    path.write_text("{not json")
    assert reloaded().medians() == {}
    assert not list(path.parent.glob("*.tmp"))


def retry_after_of_a_full_queue(measured: SwapCosts | None) -> float:
    d = Driver.create([profile("img", 10.0, queue_limit=1)], tiers={"img": Tier.DISK})
    d.core.ledger.slots["img"].engine_up = False  # on disk, no process: a cold start
    if measured is not None:
        d.feed(CostsMeasured(0.0, "img", measured))
        assert d.core.ledger.slots["img"].profile.costs == measured
    d.arrive("a", "img", 0.1)
    rejected = d.arrive("b", "img", 0.2)
    assert len(rejected) == 1 and isinstance(rejected[0], Reject) and rejected[0].status == 429
    return rejected[0].retry_after_s


def test_the_core_prices_a_full_queue_with_the_measured_start() -> None:
    """Retry-After of a 429 adds the way back into VRAM: the estimate until it is measured."""
    estimated = retry_after_of_a_full_queue(None)
    measured = retry_after_of_a_full_queue(replace(COSTS, cold_start_s=150.0))
    assert measured - estimated == pytest.approx(150.0 - COSTS.cold_start_s)
