"""Restore: on an idle GPU, the model most likely asked for next comes back from host RAM."""

from __future__ import annotations

from appliance.scheduler import Action, Dispatch, PolicySettings, Prefetch, Sleep, Start, Stop, Tier, Unload, Wake
from appliance.scheduler.forecast import NextModelForecast
from appliance.scheduler.policy import RestoreView, restore_pays

from .residency_fakes import Driver, box

HOST = dict.fromkeys(("llm", "image", "speech"), Tier.HOST)


def settle(d: Driver, actions: list[Action], at: float) -> None:
    """Play the engines: every transition completes at once."""
    pending = list(actions)
    while pending:
        a = pending.pop(0)
        if isinstance(a, Wake | Start):
            pending += d.ready(a.model, at)
        elif isinstance(a, Sleep | Stop | Unload) and a.model in d.resident:
            pending += d.released(a.model, at)
        elif isinstance(a, Prefetch):
            pending += d.prefetched(a.model, at)


def voice_turns(d: Driver, turns: int) -> float:
    """A voice assistant: a chat, its speech right after, then a long pause (playback, thinking)."""
    t = 0.0
    for n in range(turns):
        t = 100.0 * n
        settle(d, d.arrive(f"c{n}", "llm", t), t)
        assert f"c{n}" in d.dispatched()
        settle(d, d.done(f"c{n}", t + 2.0), t + 2.0)
        settle(d, d.arrive(f"s{n}", "speech", t + 2.0), t + 2.0)  # at once: no pause observed
        assert f"s{n}" in d.dispatched()
        settle(d, d.done(f"s{n}", t + 7.0), t + 7.0)
    return t + 7.0


def test_the_llm_comes_back_while_the_gpu_idles_after_speech() -> None:
    d = Driver.create(box(), tiers=HOST, settings=PolicySettings(restore=True, restore_after_s=1.0))
    end = voice_turns(d, 7)  # 6 pauses observed (decayed weight 5.7), each followed by a chat
    assert d.core.next_deadline() == end + 1.0
    assert d.tick(end + 0.5) == []
    assert d.tick(end + 1.0) == [Sleep("speech")]  # XTTS (3.4 GB) and the LLM (21.7 GB) do not fit together
    assert d.released("speech", end + 1.05) == [Wake("llm")]
    assert d.ready("llm", end + 2.2) == []
    assert d.arrive("c9", "llm", end + 10.0) == [Dispatch("llm", "c9")]  # no wake to wait for


def test_no_restore_when_switched_off_or_before_enough_pauses() -> None:
    off = Driver.create(box(), tiers=HOST)
    end = voice_turns(off, 7)
    assert off.tick(end + 5.0) == []
    young = Driver.create(box(), tiers=HOST, settings=PolicySettings(restore=True))
    end = voice_turns(young, 3)  # 2 pauses observed: too few to bet on
    assert young.tick(end + 5.0) == []


def test_the_forecast_counts_decay_so_habits_can_change() -> None:
    f = NextModelForecast(decay=0.5)
    for _ in range(4):
        f.observe("speech", "llm")
    assert f.probabilities("speech") == {"llm": 1.0}
    f.observe("speech", "image")
    f.observe("speech", "image")
    p = f.probabilities("speech")
    assert p["image"] > p["llm"]
    assert f.probabilities("llm") == {} and f.observations("llm") == 0.0


def test_the_restore_gamble_weighs_the_swap_saved_against_the_victims_cost() -> None:
    # likely chat (0.8, 1.15 s saved) against XTTS asked next with 0.2 (0.2 s to bring back)
    assert restore_pays(RestoreView(0.8, 1.15, ((0.2, 0.2),)))
    assert not restore_pays(RestoreView(0.45, 1.15, ()))  # a coin toss is no bet
    assert not restore_pays(RestoreView(0.5, 0.2, ((0.5, 1.2),)))  # a cheap model never evicts a dear one
