"""The pure residency core driven synchronously with fake effects."""

from __future__ import annotations

import pytest

from appliance.scheduler import (
    GB,
    ActionFailed,
    ActionKind,
    Dispatch,
    EngineExited,
    GpuSample,
    InMemoryFootprintStore,
    ModelKind,
    ModelProfile,
    PolicySettings,
    Preempt,
    Reject,
    Sleep,
    Start,
    Stop,
    Tier,
    Unload,
    Wake,
)

from .residency_fakes import Driver, box, profile

HOST = dict.fromkeys(("llm", "image", "speech"), Tier.HOST)


def test_cold_model_is_started_then_dispatched() -> None:
    d = Driver.create(box())
    assert d.arrive("r1", "image", 0.0) == [Start("image")]
    assert d.ready("image", 20.0) == [Dispatch("image", "r1")]


def test_slept_model_is_woken() -> None:
    d = Driver.create(box(), tiers=HOST)
    assert d.arrive("r1", "llm", 0.0) == [Wake("llm")]
    assert d.ready("llm", 1.0) == [Dispatch("llm", "r1")]


def test_speech_co_resides_with_image() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("i1", "image", 0.0)
    assert d.arrive("s1", "speech", 0.1) == [Wake("speech")]  # 14.8 + 3.4 GB fit in 22.5 GB
    d.ready("image", 1.0)
    d.ready("speech", 1.0)
    assert d.dispatched() == ["i1"]  # one engine computes at a time, oldest waiter first
    assert d.done("i1", 7.0) == [Dispatch("speech", "s1")]
    assert d.of(Sleep) == []


def test_co_residents_compute_together_when_not_serialized() -> None:
    d = Driver.create(box(), tiers=HOST, settings=PolicySettings(one_engine_at_a_time=False))
    d.arrive("i1", "image", 0.0)
    d.arrive("s1", "speech", 0.1)
    d.ready("image", 1.0)
    d.ready("speech", 1.0)
    assert set(d.dispatched()) == {"i1", "s1"}


def test_co_resident_waiters_are_served_oldest_first() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("i1", "image", 0.0)
    d.arrive("s1", "speech", 0.1)
    d.ready("image", 1.0)
    d.ready("speech", 1.0)
    d.arrive("i2", "image", 2.0)  # younger than s1: waits behind it
    assert d.done("i1", 7.0) == [Dispatch("speech", "s1")]
    assert d.done("s1", 9.0) == [Dispatch("image", "i2")]


def test_held_co_resident_runs_once_its_head_waited_its_hold() -> None:
    d = Driver.create(box(), tiers=HOST, settings=PolicySettings(one_engine_hold=0.5))
    d.arrive("i1", "image", 0.0)
    d.arrive("s1", "speech", 0.1)
    d.ready("image", 1.0)
    d.ready("speech", 1.0)
    deadline = d.core.next_deadline()
    assert deadline is not None and deadline == pytest.approx(16.0)  # half of speech's 30 s max_wait
    assert d.tick(16.0) == [Dispatch("speech", "s1")]  # the image still runs: both are time-sliced


def small_llm_box() -> list[ModelProfile]:
    """A 7B LLM that fits beside XTTS (8 + 3.4 GB)."""
    return [profile("llm", 8.0, ModelKind.LLM, concurrency=8, max_wait_s=60.0),
            profile("speech", 3.4, ModelKind.SPEECH, max_wait_s=30.0)]


def test_an_idle_llm_lets_a_speech_job_run_alone_first() -> None:
    d = Driver.create(small_llm_box(), tiers={"llm": Tier.VRAM, "speech": Tier.VRAM})
    assert d.arrive("s1", "speech", 0.0) == [Dispatch("speech", "s1")]
    assert d.arrive("c1", "llm", 0.5) == []  # the LLM has nothing running: it waits its turn
    assert d.done("s1", 5.0) == [Dispatch("llm", "c1")]


def test_a_running_llm_batch_keeps_admitting_and_is_never_waited_for() -> None:
    d = Driver.create(small_llm_box(), tiers={"llm": Tier.VRAM, "speech": Tier.VRAM})
    d.arrive("c1", "llm", 0.0)
    assert d.arrive("s1", "speech", 1.0) == [Dispatch("speech", "s1")]  # no one waits for a batch
    d.arrive("s2", "speech", 1.5)
    assert d.arrive("c2", "llm", 2.0) == [Dispatch("llm", "c2")]  # s2 is older: no matter
    assert d.dispatched() == ["c1", "s1", "c2"]


def test_llm_needs_both_co_residents_released() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("i1", "image", 0.0)
    d.arrive("s1", "speech", 0.0)
    d.ready("image", 1.0)
    d.ready("speech", 1.0)
    d.done("i1", 7.0)
    d.done("s1", 7.0)
    # Both are idle, so the LLM's arrival switches at once; the LLM waits for both releases.
    assert d.arrive("c1", "llm", 8.0) == [Sleep("image"), Sleep("speech")]
    assert d.released("image", 8.05) == []
    assert d.released("speech", 8.05) == [Wake("llm")]


def test_a_sleeping_engines_context_counts_toward_its_own_wake() -> None:
    """A slept engine keeps its CUDA context: waking it adds its footprint less that, so a worker
    that fits beside it is not evicted for the bytes the engine already holds."""
    d = Driver.create([profile("llm", 20.0, ModelKind.LLM, concurrency=4), profile("image", 15.0),
                       profile("voice", 2.0)])
    d.arrive("v1", "voice", 0.0)
    d.ready("voice", 1.0)
    d.arrive("c1", "llm", 1.0)
    d.ready("llm", 2.0)
    d.done("v1", 2.0)
    d.done("c1", 3.0)
    d.arrive("i1", "image", 4.0)
    d.released("llm", 4.1, held_gb=1.0)
    d.ready("image", 5.0)
    d.done("i1", 6.0)
    d.arrive("c2", "llm", 7.0)  # 20 - 1 held = 19 GB more; 22.5 - 2 - 1 - 0.3 = 19.2 GB free
    d.released("image", 7.1, held_gb=0.3)
    assert d.of(Wake, "llm") and not d.of(Sleep, "voice") and not d.of(Stop, "voice")


def test_sleeping_engines_context_is_stopped_when_only_it_is_in_the_way() -> None:
    """Nothing resident is left to evict and what a sleeping engine still holds is what is missing:
    that engine is stopped (its host copy goes with it) and the model starts once it is verified."""
    d = Driver.create([profile("big", 22.0), profile("image", 10.0)])
    d.arrive("i1", "image", 0.0)
    d.ready("image", 1.0)
    d.done("i1", 2.0)
    d.arrive("b1", "big", 3.0)
    d.released("image", 3.1, held_gb=0.75)  # 22.5 - 0.75 < 22: still does not fit
    assert d.of(Stop, "image") and not d.of(Start, "big")
    d.released("image", 3.5)
    assert d.of(Start, "big")
    d.ready("big", 10.0)
    assert "b1" in d.dispatched()


def beside_two_checkpoints(first: ModelProfile, gb: float, *, unloads_all: bool = False,
                           pin_b: bool = False) -> Driver:
    """`first` beside checkpoints sd-a and sd-b of `gb` GB each, served by one ComfyUI process."""
    shared: dict[str, object] = {"engine": "comfy", "release_unloads_process": unloads_all}
    return Driver.create([first, profile("sd-a", gb, **shared), profile("sd-b", gb, pinned=pin_b, **shared)])


def run_both_checkpoints(d: Driver, *, b_done: bool = True) -> None:
    """sd-a and sd-b each load and run one job (sd-b's is left running unless `b_done`)."""
    for rid, model, t in (("a1", "sd-a", 0.0), ("b1", "sd-b", 0.1)):
        d.arrive(rid, model, t)
    d.ready("sd-a", 1.0)
    d.ready("sd-b", 1.0)
    d.done("a1", 2.0)
    if b_done:
        d.done("b1", 2.0)


def run_a_beside_pinned_b(d: Driver) -> None:
    """The pinned sd-b loads at once; sd-a then loads and runs one job."""
    d.tick(0.0)
    d.ready("sd-b", 0.5)
    d.arrive("a1", "sd-a", 1.0)
    d.ready("sd-a", 1.5)
    d.done("a1", 2.0)


def test_one_process_serving_two_models_holds_one_context() -> None:
    """Two checkpoints in one ComfyUI: the slept one's context is the same process's context, already
    inside the resident one's measured footprint, so it is not counted twice (and never stopped)."""
    d = beside_two_checkpoints(profile("big", 13.6), 8.0, pin_b=True)
    run_a_beside_pinned_b(d)
    d.arrive("b1", "big", 3.0)
    assert d.released("sd-a", 3.1, held_gb=1.0) == [Start("big")]  # 22.5 - 8 >= 13.6
    assert not d.of(Stop) and not d.of(Sleep, "sd-b")


def test_checkpoints_of_one_comfyui_are_evicted_together() -> None:
    """ComfyUI's /free unloads every checkpoint it holds: evicting one evicts all, so they are one
    candidate and all are released (the core's books stay true)."""
    d = beside_two_checkpoints(profile("llm", 12.0, ModelKind.LLM, concurrency=4), 6.0, unloads_all=True)
    run_both_checkpoints(d)
    assert d.arrive("c1", "llm", 3.0) == [Sleep("sd-a"), Sleep("sd-b")]  # one would have been enough


def test_a_pinned_checkpoint_does_not_keep_its_comfyui_siblings_resident() -> None:
    d = beside_two_checkpoints(profile("llm", 12.0, ModelKind.LLM, concurrency=4), 6.0, unloads_all=True,
                               pin_b=True)
    run_a_beside_pinned_b(d)
    assert d.arrive("c1", "llm", 3.0) == [Sleep("sd-a")]  # alone: the pinned one is never a victim


def test_an_escalated_stop_of_a_shared_process_takes_its_resident_sibling_down_too() -> None:
    """A release that fails escalates to a stop of the whole ComfyUI: the checkpoint still resident
    in it is gone as well, as if its engine had exited (its running job fails; it restarts later)."""
    d = beside_two_checkpoints(profile("llm", 12.0, ModelKind.LLM, concurrency=4), 6.0)
    run_both_checkpoints(d, b_done=False)  # b1 still runs
    assert d.arrive("c1", "llm", 3.0) == [Sleep("sd-a")]
    assert d.feed(ActionFailed(3.5, "sd-a", ActionKind.SLEEP, "memory did not drop")) == [Stop("sd-a")]
    d.resident.pop("sd-b")  # the fake process is gone with it
    d.running.pop("sd-b")
    d.released("sd-a", 4.0)
    snap = d.core.snapshot()
    assert snap.models["sd-b"].tier is Tier.DISK and snap.models["sd-b"].in_flight == 0
    assert d.of(Start, "llm") or d.of(Wake, "llm")


def test_stopping_a_process_takes_its_sleeping_models_down_with_it() -> None:
    d = beside_two_checkpoints(profile("big", 21.8), 8.0)
    run_both_checkpoints(d)
    d.arrive("c1", "big", 3.0)  # both released, then one 1 GB context is still in the way
    d.released("sd-a", 3.1, held_gb=1.0)
    d.released("sd-b", 3.1, held_gb=1.0)
    stops = d.of(Stop)
    assert len(stops) == 1 and not d.of(Start, "big")
    d.released(stops[0].model, 3.5)
    assert d.of(Start, "big")
    snap = d.core.snapshot()
    assert snap.models["sd-a"].tier is Tier.DISK and snap.models["sd-b"].tier is Tier.DISK
    assert not snap.models["sd-a"].engine_up and not snap.models["sd-b"].engine_up


def test_resident_model_keeps_serving_while_it_has_work() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    d.arrive("i1", "image", 2.0)  # the LLM is busy: the image waits (protection)
    assert d.arrive("c2", "llm", 3.0) == [Dispatch("llm", "c2")]
    assert d.of(Sleep) == []
    d.done("c1", 10.0)
    assert d.done("c2", 12.0) == [Sleep("llm")]  # no work left on the LLM: switch
    assert d.released("llm", 12.05) == [Wake("image")]


def test_max_wait_overrides_the_resident_batch_and_drains_before_evicting() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    d.arrive("i1", "image", 2.0)
    assert d.core.next_deadline() == pytest.approx(32.0)  # image max_wait is 30 s
    d.arrive("c2", "llm", 20.0)
    assert d.tick(32.0) == []  # trigger fired: the LLM drains, nothing is killed
    assert d.core.snapshot().plan_target == "image"
    assert d.arrive("c3", "llm", 33.0) == []  # a draining model admits nothing new
    assert d.done("c1", 40.0) == []  # c2 still runs
    assert d.done("c2", 50.0) == [Sleep("llm")]
    d.released("llm", 50.05)
    assert d.ready("image", 51.0) == [Dispatch("image", "i1")]
    # c3 waits its turn; after the image batch the LLM comes back.
    assert d.done("i1", 57.0) == [Sleep("image")]
    d.released("image", 57.05)
    assert d.ready("llm", 58.2) == [Dispatch("llm", "c3")]


def test_running_image_job_is_never_preempted() -> None:
    d = Driver.create(box(), tiers=HOST, settings=PolicySettings(preemption=True))
    d.arrive("i1", "image", 0.0)
    d.ready("image", 1.0)
    d.arrive("i2", "image", 1.5)
    d.arrive("c1", "llm", 2.0)
    d.tick(62.0)  # the LLM's max_wait of 60 s is reached
    assert d.of(Preempt) == []
    assert d.of(Sleep, "image") == []
    assert d.done("i1", 70.0) == [Sleep("image")]  # i2 waits: the image model drains
    assert "i2" not in d.dispatched()


def preempting_driver() -> Driver:
    profiles = box()
    profiles[0] = profile("llm", 21.7, ModelKind.LLM, host_gb=19.3, concurrency=8, max_wait_s=60.0,
                          preemptible=True)
    return Driver.create(profiles, tiers=HOST, settings=PolicySettings(preemption=True))


def test_llm_streams_are_preempted_and_resumed_when_enabled() -> None:
    d = preempting_driver()
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    d.arrive("c2", "llm", 2.0)
    d.arrive("i1", "image", 3.0)
    out = d.tick(33.0)
    assert out == [Preempt("llm", "c1"), Preempt("llm", "c2"), Sleep("llm")]
    d.released("llm", 33.05)
    d.ready("image", 34.0)
    d.done("i1", 40.0)
    d.released("image", 40.05)
    assert d.ready("llm", 41.2) == [
        Dispatch("llm", "c1", resume=True),
        Dispatch("llm", "c2", resume=True),
    ]


def test_a_request_the_caller_cannot_resume_drains_while_streams_are_preempted() -> None:
    d = preempting_driver()
    d.arrive("c1", "llm", 0.0)
    d.arrive("tools", "llm", 0.1, preemptible=False)  # e.g. a tool call or n > 1
    d.ready("llm", 1.0)
    d.arrive("i1", "image", 3.0)
    assert d.tick(33.0) == [Preempt("llm", "c1")]  # the other one runs to its end
    assert d.done("tools", 40.0) == [Sleep("llm")]
    d.released("llm", 40.05)
    d.ready("image", 41.0)
    d.done("i1", 47.0)
    d.released("image", 47.05)
    assert d.ready("llm", 48.0) == [Dispatch("llm", "c1", resume=True)]


def test_preemption_disabled_means_drain() -> None:
    profiles = box()
    profiles[0] = profile("llm", 21.7, ModelKind.LLM, concurrency=8, max_wait_s=60.0, preemptible=True)
    d = Driver.create(profiles, tiers=HOST)  # preemption off in the settings
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    d.arrive("i1", "image", 2.0)
    assert d.tick(32.0) == []
    assert d.of(Preempt) == []


def test_keep_alive_ttl_releases_an_idle_model() -> None:
    d = Driver.create([profile("a", 5, keep_alive_s=10.0)], tiers={"a": Tier.HOST})
    d.arrive("r1", "a", 0.0)
    d.ready("a", 1.0)
    d.done("r1", 3.0)
    assert d.core.next_deadline() == pytest.approx(13.0)
    assert d.tick(12.9) == []
    assert d.tick(13.0) == [Sleep("a")]


def test_no_keep_alive_means_stay_resident() -> None:
    d = Driver.create([profile("a", 5)], tiers={"a": Tier.HOST})
    d.arrive("r1", "a", 0.0)
    d.ready("a", 1.0)
    d.done("r1", 3.0)
    assert d.core.next_deadline() is None
    assert d.tick(10_000.0) == []


def test_pinned_model_is_loaded_and_never_evicted() -> None:
    d = Driver.create(
        [profile("pin", 10, pinned=True, keep_alive_s=1.0), profile("a", 10), profile("b", 10)],
        vram_gb=22.0,
        tiers=dict.fromkeys(("pin", "a", "b"), Tier.HOST),
    )
    assert d.tick(0.0) == [Wake("pin")]
    d.ready("pin", 1.0)
    d.arrive("r1", "a", 2.0)
    d.ready("a", 3.0)
    d.done("r1", 4.0)
    d.arrive("r2", "b", 5.0)  # b needs a victim: only "a" may go
    assert d.of(Sleep) == [Sleep("a")]
    d.tick(1_000.0)
    assert d.of(Sleep, "pin") == []


def test_model_too_big_beside_pins_is_rejected_503() -> None:
    d = Driver.create([profile("pin", 15, pinned=True), profile("big", 10)], vram_gb=22.0)
    out = d.arrive("r1", "big", 0.0)
    assert Start("pin") in out
    (reject,) = [a for a in out if isinstance(a, Reject)]
    assert reject.status == 503 and reject.reason.startswith("cannot fit") and reject.retry_after_s > 0


def test_queue_limit_answers_429_with_retry_after() -> None:
    d = Driver.create([profile("a", 5, queue_limit=2, typical_service_s=6.0)])
    d.arrive("r1", "a", 0.0)
    d.arrive("r2", "a", 0.0)
    (reject,) = d.arrive("r3", "a", 0.0)
    assert isinstance(reject, Reject) and reject.status == 429
    assert reject.retry_after_s >= 12.0  # two jobs of 6 s ahead, plus the start


def test_not_downloaded_model_is_rejected_503() -> None:
    d = Driver.create([profile("a", 5, downloaded=False)])
    (reject,) = d.arrive("r1", "a", 0.0)
    assert isinstance(reject, Reject) and reject.status == 503 and reject.retry_after_s > 0


def test_unknown_model_is_rejected_404() -> None:
    d = Driver.create([profile("a", 5)])
    (reject,) = d.arrive("r1", "nope", 0.0)
    assert isinstance(reject, Reject) and reject.status == 404


def test_no_dead_max_tokens_clamp_or_lease_fields_are_left() -> None:
    """The gateway caps `max_tokens` at `models.ID.max_tokens_cap` before it asks for a lease, and
    that is the only clamp. The core used to clamp it a second time into `Dispatch.max_tokens`, and
    the loop copied it into `Lease.info` beside `Lease.waited_s`; nothing read any of them."""
    from dataclasses import fields

    from appliance.residency import Lease
    from appliance.scheduler.types import ModelProfile, Request

    assert {f.name for f in fields(Dispatch)} == {"model", "request_id", "resume"}
    assert "max_tokens" not in {f.name for f in fields(Request)} | {f.name for f in fields(ModelProfile)}
    assert not {"info", "waited_s"} & {f.name for f in fields(Lease)}
    d = Driver.create(box(), tiers=HOST)
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    assert d.of(Dispatch) == [Dispatch("llm", "c1")]


def test_measured_footprint_replaces_the_estimate_and_is_exposed() -> None:
    # Estimated at 15 + 10 GB the two cannot share 22 GB; once "a" is measured at 9 GB they can.
    d = Driver.create([profile("a", 15), profile("b", 10)], vram_gb=22.0, tiers={"a": Tier.HOST, "b": Tier.HOST})
    d.arrive("r1", "a", 0.0)
    d.ready("a", 1.0)
    assert d.arrive("r2", "b", 1.5) == []  # "a" is busy and b does not fit beside it: b waits
    out = d.feed(GpuSample(2.0, total_bytes=24 * GB, free_bytes=15 * GB, used_by_model={"a": 9 * GB, "b": 0}))
    assert out == [Wake("b")]
    assert d.core.measured_footprints() == {"a": 9 * GB}  # b is not resident: no measurement of b
    assert d.core.footprints.take_dirty() and not d.core.footprints.take_dirty()
    assert d.core.snapshot().vram_used_bytes == 19 * GB


def test_measurements_persist_across_restarts() -> None:
    store = InMemoryFootprintStore()
    d = Driver.create([profile("a", 15), profile("b", 15)], vram_gb=22.0, tiers={"a": Tier.HOST})
    d.arrive("r1", "a", 0.0)
    d.ready("a", 1.0)
    d.feed(GpuSample(2.0, total_bytes=24 * GB, free_bytes=15 * GB, used_by_model={"a": 7 * GB}))
    store.save(d.core.measured_footprints())
    again = Driver.create([profile("a", 15), profile("b", 15)], vram_gb=22.0, measured=store.load(),
                          tiers={"a": Tier.HOST, "b": Tier.HOST})
    again.arrive("r1", "a", 0.0)
    assert again.arrive("r2", "b", 0.0) == [Wake("b")]  # 7 + 15 GB fit in 22 GB


def test_foreign_gpu_memory_shrinks_the_budget() -> None:
    d = Driver.create([profile("a", 10), profile("b", 10)], vram_gb=22.0, tiers={"a": Tier.HOST, "b": Tier.HOST})
    d.feed(GpuSample(0.0, total_bytes=24 * GB, free_bytes=19 * GB, used_by_model={}))  # 5 GB not ours
    d.arrive("r1", "a", 1.0)
    assert d.arrive("r2", "b", 1.0) == []  # 10 + 10 > 22 - (5 - 0.5) GB
    assert d.core.snapshot().vram_budget_bytes == 22 * GB - int(4.5 * GB)


def test_crash_while_running_forgets_in_flight_and_restarts_for_waiters() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("i1", "image", 0.0)
    d.ready("image", 1.0)
    d.arrive("i2", "image", 2.0)
    d.resident.pop("image")
    d.running.pop("image")
    out = d.feed(EngineExited(3.0, "image", "killed by OOM"))
    assert out == [Start("image")]  # the engine is down: a cold start for the waiting i2
    view = d.core.snapshot().models["image"]
    assert view.in_flight == 0 and view.queued == 1 and view.tier is Tier.DISK
    assert d.done("i1", 4.0) == []  # a late RequestDone of a lost request is ignored
    assert d.ready("image", 20.0) == [Dispatch("image", "i2")]


def test_crash_during_a_swap_leaves_the_core_consistent() -> None:
    d = Driver.create(box(), tiers=HOST, settings=PolicySettings(max_start_failures=2, failure_backoff_s=5.0))
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    d.done("c1", 5.0)
    d.arrive("i1", "image", 6.0)  # idle LLM: switch
    d.released("llm", 6.05)
    assert d.core.snapshot().models["image"].phase == "activating"
    d.resident.pop("image")
    assert d.feed(EngineExited(6.5, "image", "segfault during load")) == []  # backoff 5 s
    snap = d.core.snapshot()
    assert snap.vram_used_bytes == 0 and snap.models["image"].queued == 1
    assert d.core.next_deadline() == pytest.approx(11.5)
    assert d.tick(11.5) == [Start("image")]
    d.resident.pop("image")
    out = d.feed(ActionFailed(30.0, "image", ActionKind.START, "timeout"))
    assert [(type(a), a.status) for a in out if isinstance(a, Reject)] == [(Reject, 503)]
    (reject,) = d.arrive("i2", "image", 31.0)  # still in backoff: answered at once
    assert isinstance(reject, Reject) and reject.status == 503
    assert d.arrive("c2", "llm", 32.0) == [Wake("llm")]  # the rest of the box still works


def test_failed_sleep_escalates_to_stop() -> None:
    d = Driver.create([profile("a", 5, keep_alive_s=1.0)], tiers={"a": Tier.HOST})
    d.arrive("r1", "a", 0.0)
    d.ready("a", 1.0)
    d.done("r1", 2.0)
    assert d.tick(3.0) == [Sleep("a")]
    assert d.feed(ActionFailed(13.0, "a", ActionKind.SLEEP, "memory did not drop")) == [Stop("a")]
    d.released("a", 15.0)
    assert d.core.snapshot().models["a"].tier is Tier.DISK
    assert not d.core.snapshot().models["a"].engine_up


def test_cancelled_waiter_is_never_dispatched() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("c1", "llm", 0.0)
    d.arrive("c2", "llm", 0.0)
    d.cancel("c1", 0.5)
    d.ready("llm", 1.0)
    assert d.dispatched() == ["c2"]


def test_cancelling_the_only_waiter_aborts_the_switch() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    d.arrive("i1", "image", 2.0)
    d.tick(32.0)  # the switch starts: the LLM drains
    d.cancel("i1", 33.0)
    assert d.core.snapshot().plan_target is None
    assert d.arrive("c2", "llm", 34.0) == [Dispatch("llm", "c2")]  # serving again


def test_cancelled_running_request_frees_its_slot() -> None:
    d = Driver.create([profile("a", 5, concurrency=1)], tiers={"a": Tier.HOST})
    d.arrive("r1", "a", 0.0)
    d.arrive("r2", "a", 0.0)
    d.ready("a", 1.0)
    assert d.cancel("r1", 2.0) == [Dispatch("a", "r2")]


def test_host_ram_full_drops_a_cheaper_host_copy_first() -> None:
    # Host RAM holds one 10 GB copy. "cold" sleeps there but is never used; "hot" is used often.
    # "cold" cannot unload while keeping its process (vLLM after a level-1 sleep): it is stopped.
    profiles = [profile("cold", 10, supports_unload=False), profile("hot", 10, keep_alive_s=1.0)]
    d = Driver.create(profiles, vram_gb=22.0, host_gb=10.0, tiers={"cold": Tier.HOST})
    d.arrive("h1", "hot", 0.0)
    d.ready("hot", 10.0)
    for i in range(5):
        d.arrive(f"h{i + 2}", "hot", 11.0 + i)
    for i in range(6):
        d.done(f"h{i + 1}", 20.0)
    assert d.tick(21.0) == [Stop("cold"), Sleep("hot")]


def test_host_ram_full_of_a_more_valuable_copy_unloads_instead() -> None:
    profiles = [profile("valuable", 10), profile("rare", 10, keep_alive_s=1.0)]
    d = Driver.create(profiles, vram_gb=22.0, host_gb=10.0, tiers={"valuable": Tier.HOST})
    d.core.ledger.slots["valuable"].frequency = 100.0  # used often: its copy saves a load from disk each time
    d.arrive("r1", "rare", 0.0)
    d.ready("rare", 5.0)
    d.done("r1", 6.0)
    assert d.tick(7.0) == [Unload("rare")]


def test_next_deadline_is_never_in_the_past() -> None:
    d = Driver.create(box(), tiers=HOST)
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    d.arrive("i1", "image", 2.0)
    d.tick(32.0)  # the trigger fired but the drain must finish first
    deadline = d.core.next_deadline()
    assert deadline is None or deadline > 32.0


def test_duplicate_request_id_is_a_driver_bug() -> None:
    d = Driver.create([profile("a", 5)])
    d.arrive("r1", "a", 0.0)
    with pytest.raises(ValueError, match="already known"):
        d.arrive("r1", "a", 1.0)


def test_an_idle_switch_is_held_until_the_waiter_has_its_credit() -> None:
    d = Driver.create(box(), tiers=HOST, settings=PolicySettings(idle_switch_hold_s=3.0))
    d.arrive("c1", "llm", 0.0)
    d.ready("llm", 1.0)
    d.done("c1", 2.0)
    assert d.arrive("i1", "image", 10.0) == []  # the LLM is idle, but the image waits its hold
    assert d.core.next_deadline() == pytest.approx(13.0)
    d.arrive("i2", "image", 12.0)  # shares the swap
    assert d.tick(13.0) == [Sleep("llm")]
    d.released("llm", 13.1)
    d.ready("image", 14.0)
    d.done("i1", 20.0)
    assert d.dispatched()[-2:] == ["i1", "i2"]


def test_resident_only_request_is_refused_without_any_swap_unless_resident() -> None:
    d = Driver.create(box(), tiers=HOST)
    refused = d.arrive("r1", "llm", 0.0, resident_only=True)
    assert len(refused) == 1 and isinstance(refused[0], Reject)
    assert refused[0].status == 409 and refused[0].retry_after_s >= 1.0
    assert d.of(Wake) == [] and d.of(Start) == []  # nothing was brought in for it
    d.arrive("i1", "image", 1.0)
    d.ready("image", 2.0)
    assert d.done("i1", 3.0) == []
    assert d.arrive("r2", "image", 4.0, resident_only=True) == [Dispatch("image", "r2")]
    d.done("r2", 5.0)
    d.arrive("l1", "llm", 6.0)  # the image model is evicted for it (its release begins)
    evicting = d.arrive("r3", "image", 6.1, resident_only=True)
    assert [type(a) for a in evicting] == [Reject] and evicting[0].status == 409  # type: ignore[union-attr]
