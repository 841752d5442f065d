"""The loading-state signal (issue 18): a waiting client is told its model's tier, its place in line and
about how long the model takes to come in, from the core's view and the swap costs."""

from __future__ import annotations

from appliance.scheduler.snapshot import SlotView
from appliance.scheduler.types import SwapCosts, Tier
from appliance.scheduler.waiting import estimate

COSTS = SwapCosts(wake_s=0.9, cold_start_s=95.0, load_s=3.3, release_s=0.1)


def view(tier: Tier, *, up: bool = True, queued: int = 0) -> SlotView:
    return SlotView(tier=tier, phase="idle", engine_up=up, draining=False, queued=queued, in_flight=0,
                    footprint_bytes=1)


def test_each_tier_costs_what_bringing_it_in_costs() -> None:
    assert estimate(view(Tier.VRAM, queued=2), COSTS).load_s == 0.0
    assert estimate(view(Tier.HOST), COSTS).load_s == 0.9
    assert estimate(view(Tier.DISK), COSTS).load_s == 3.3  # the engine is up: a load into it
    assert estimate(view(Tier.DISK, up=False), COSTS).load_s == 95.0  # a cold start
    assert estimate(None, COSTS).load_s == 95.0


def test_the_comment_gives_place_in_line_and_seconds_on_one_line() -> None:
    text = estimate(view(Tier.HOST, queued=3), COSTS).comment("img")  # the client's own request is the third
    assert text == "waiting for model img to load: host, position 3, about 1 s" and "\n" not in text
    assert estimate(view(Tier.VRAM, queued=1), COSTS).comment("chat") == "waiting for model chat: resident, 1 queued"
