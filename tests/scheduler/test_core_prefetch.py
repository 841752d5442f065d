"""Prefetch: a sleeping vLLM's weights come back while the model it does not fit beside still works."""

from __future__ import annotations

from appliance.scheduler import (
    GB,
    ActionFailed,
    ActionKind,
    Dispatch,
    ModelKind,
    ModelProfile,
    PolicySettings,
    Prefetch,
    Sleep,
    Start,
    Stop,
    Tier,
    Wake,
)

from .residency_fakes import Driver, profile

BUDGET_GB = 24 * 1.073741824 - 1.5 * 1.073741824  # an RTX 3090's 24 GiB less a 1.5 GiB reserve
HOST = dict.fromkeys(("llm", "image", "speech"), Tier.HOST)


def staged_box() -> list[ModelProfile]:
    """The reference box; the LLM's 19.3 GB of weights fit beside XTTS (3.4 GB), its KV cache does not."""
    return [
        profile("llm", 21.7, ModelKind.LLM, host_gb=19.3, concurrency=8, max_wait_s=60.0,
                prefetch_bytes=int(19.3 * GB)),
        profile("image", 14.8, ModelKind.IMAGE, max_wait_s=30.0),
        profile("speech", 3.4, ModelKind.SPEECH, host_gb=1.9, max_wait_s=30.0),
    ]


def speech_running(settings: PolicySettings | None = None) -> Driver:
    d = Driver.create(staged_box(), vram_gb=BUDGET_GB, tiers=HOST, settings=settings)
    assert d.arrive("s1", "speech", 0.0) == [Wake("speech")]
    assert d.ready("speech", 0.2) == [Dispatch("speech", "s1")]
    return d


def test_weights_come_back_during_the_speech_job_and_the_wake_maps_the_rest() -> None:
    d = speech_running()
    assert d.arrive("c1", "llm", 1.0) == [Prefetch("llm")]  # 19.3 + 3.4 GB fit; 21.7 + 3.4 do not
    assert d.prefetched("llm", 2.1) == []
    assert d.core.snapshot().models["llm"].prefetched_bytes == int(19.3 * GB)
    assert d.done("s1", 5.0) == [Sleep("speech")]
    assert d.released("speech", 5.05) == [Wake("llm")]
    assert d.ready("llm", 5.15) == [Dispatch("llm", "c1")]
    assert d.core.snapshot().models["llm"].prefetched_bytes == 0


def test_no_prefetch_when_switched_off() -> None:
    d = speech_running(PolicySettings(prefetch=False))
    assert d.arrive("c1", "llm", 1.0) == []
    assert d.done("s1", 5.0) == [Sleep("speech")]
    assert d.released("speech", 5.05) == [Wake("llm")]


def test_the_wake_waits_for_a_prefetch_under_way() -> None:
    d = speech_running()
    d.arrive("c1", "llm", 1.0)
    assert d.done("s1", 1.5) == [Sleep("speech")]
    assert d.released("speech", 1.55) == []  # the weights are still on their way
    assert d.prefetched("llm", 2.1) == [Wake("llm")]


def test_a_prefetched_model_with_work_waiting_is_never_stopped_for_room() -> None:
    """Half-awake vLLM cannot sleep again; stopping it would cost a cold start. An image that
    needs the room waits for the LLM's turn, even past its max_wait."""
    d = speech_running()
    d.arrive("c1", "llm", 1.0)
    d.prefetched("llm", 2.1)
    d.arrive("s2", "speech", 2.2)
    assert d.arrive("i1", "image", 2.5) == []
    assert d.tick(40.0) == []  # the image's max_wait has passed: still no Stop of the LLM,
    assert d.core.snapshot().plan_target == "llm"  # whose turn now comes at once, s2 or not
    assert d.done("s1", 41.0) == [Sleep("speech")]
    assert d.released("speech", 41.05) == [Wake("llm")]
    assert d.ready("llm", 41.15) == [Dispatch("llm", "c1")]
    assert d.done("c1", 45.0) == [Sleep("llm")]  # then the image, overdue, takes its turn
    assert d.released("llm", 45.05) == [Wake("image"), Wake("speech")]  # s2: XTTS fits beside the image
    assert d.of(Stop) == []


def test_a_prefetched_model_left_without_work_is_stopped_when_the_room_is_needed() -> None:
    d = speech_running()
    d.arrive("c1", "llm", 1.0)
    d.prefetched("llm", 2.1)
    d.cancel("c1", 2.2)
    assert d.arrive("i1", "image", 2.5) == [Stop("llm")]
    assert d.released("llm", 3.0) == [Wake("image")]  # 14.8 GB beside XTTS's 3.4 GB
    assert d.core.snapshot().models["llm"].tier is Tier.DISK


def test_a_failed_prefetch_leaves_the_model_on_disk_to_be_started() -> None:
    d = speech_running()
    d.arrive("c1", "llm", 1.0)
    d.half_awake.discard("llm")
    d.held.pop("llm")  # the driver stopped the engine
    assert d.feed(ActionFailed(1.5, "llm", ActionKind.PREFETCH, "wake_up -> 500")) == []
    llm = d.core.snapshot().models["llm"]
    assert llm.tier is Tier.DISK and not llm.engine_up and llm.prefetched_bytes == 0
    assert d.done("s1", 5.0) == [Sleep("speech")]
    assert d.released("speech", 5.05) == [Start("llm")]


def test_a_declined_prefetch_leaves_the_engine_asleep_and_the_wake_whole() -> None:
    """The driver measured too little free memory for the weights and never touched vLLM: the
    model waits for its whole wake, is not prefetched again meanwhile, and may be next time."""
    d = speech_running()
    assert d.arrive("c1", "llm", 1.0) == [Prefetch("llm")]
    assert d.prefetch_declined("llm", 1.01) == []
    llm = d.core.snapshot().models["llm"]
    assert llm.tier is Tier.HOST and llm.engine_up and llm.prefetched_bytes == 0 and llm.phase == "steady"
    assert d.arrive("c2", "llm", 2.0) == []  # no second try before the wake
    assert d.done("s1", 5.0) == [Sleep("speech")]
    assert d.released("speech", 5.05) == [Wake("llm")]
    assert d.ready("llm", 6.2) == [Dispatch("llm", "c1"), Dispatch("llm", "c2")]
    assert d.of(Stop) == []
    d.done("c1", 8.0)
    d.done("c2", 8.5)
    assert d.arrive("s2", "speech", 9.0) == [Sleep("llm")]
    d.released("llm", 9.05)
    d.ready("speech", 9.3)
    assert d.arrive("c3", "llm", 9.5) == [Prefetch("llm")]  # the next turn may prefetch again
