"""Host copies dropped for room: never a half-awake vLLM nor the model a switch is for, and priced at
what dropping them costs (a load from disk, or a cold start), with the shipped host-RAM budget."""

from __future__ import annotations

import pytest

from appliance.scheduler import (
    GB,
    Dispatch,
    ModelKind,
    ModelProfile,
    PolicySettings,
    Prefetch,
    Sleep,
    Stop,
    SwapCosts,
    Tier,
    Unload,
    Wake,
)
from appliance.scheduler.policy import HostView, choose_release, host_copy_value
from appliance.sim import workloads
from appliance.sim.calibration import Calibration
from appliance.sim.policies import simulate

from .residency_fakes import Driver, profile

BUDGET_GB = 24 * 1.073741824 - 1.5 * 1.073741824  # an RTX 3090's 24 GiB less a 1.5 GiB reserve
HOST_GB = 32 * 1.073741824  # the shipped gpu.host_ram_budget_gb (GiB): the three models' 36 GB do not fit
HOST = dict.fromkeys(("llm", "image", "speech"), Tier.HOST)
HOUR = 3600.0


def staged_box() -> list[ModelProfile]:
    return [
        profile("llm", 21.7, ModelKind.LLM, host_gb=19.3, concurrency=8, max_wait_s=60.0,
                prefetch_bytes=int(19.3 * GB)),
        profile("image", 14.8, ModelKind.IMAGE, max_wait_s=30.0),
        profile("speech", 3.4, ModelKind.SPEECH, host_gb=1.9, max_wait_s=30.0),
    ]


def speech_running(settings: PolicySettings | None = None) -> Driver:
    d = Driver.create(staged_box(), vram_gb=BUDGET_GB, host_gb=HOST_GB, tiers=HOST, settings=settings)
    assert d.arrive("s1", "speech", 0.0) == [Wake("speech")]
    assert d.ready("speech", 0.2) == [Dispatch("speech", "s1")]
    return d


def test_a_prefetched_vllm_is_never_dropped_from_host_ram() -> None:
    """W1@0.7 seed 6 in miniature: the LLM's weights came back for a queued chat beside a working
    XTTS; XTTS's sleep needs host room, and the half-awake LLM (the switch's target) used to be
    the copy dropped, with an Unload that vLLM cannot do half awake (the Driver refuses it)."""
    d = speech_running()
    assert d.arrive("c1", "llm", 1.0) == [Prefetch("llm")]
    assert d.prefetched("llm", 2.1) == []
    out = d.done("s1", 3.0)
    assert Unload("llm") not in out and Stop("llm") not in out
    assert out == [Unload("image"), Sleep("speech")]  # the image's copy goes, the LLM's wake stays next
    assert d.released("speech", 3.05) == [Wake("llm")]
    assert d.ready("llm", 3.15) == [Dispatch("llm", "c1")]


def test_the_switch_target_s_host_copy_is_never_dropped() -> None:
    """Without prefetch, the LLM waits asleep for XTTS to leave; dropping its copy to make room for
    XTTS's would turn its wake (1 s) into a load from disk."""
    d = speech_running(PolicySettings(prefetch=False))
    assert d.arrive("c1", "llm", 1.0) == []
    out = d.done("s1", 3.0)
    assert out == [Unload("image"), Sleep("speech")]
    assert d.released("speech", 3.05) == [Wake("llm")]


def test_a_host_copy_drop_is_priced_at_a_load_from_disk_or_a_cold_start() -> None:
    """A copy of a model whose engine cannot unload saves a cold start each time it is used: it
    outweighs a more often used copy that only saves a load from disk. Priced as a wake (the
    GreedyDual value of residence), the rarely used one would be dropped and stopped."""
    costs = SwapCosts(wake_s=1.0, cold_start_s=90.0, load_s=4.0, release_s=0.05)

    def p(model: str, *, unload: bool) -> ModelProfile:
        return ModelProfile(model, ModelKind.OTHER, 10 * GB, 10 * GB, costs, supports_unload=unload)

    rare_cold, often_loaded, leaving = p("rare", unload=False), p("often", unload=True), p("leaving", unload=True)
    hosts = [
        HostView("rare", 10 * GB, host_copy_value(0.0, 1.0, rare_cold), stop_only=True),  # 1 x 89 s / 10 GB
        HostView("often", 10 * GB, host_copy_value(0.0, 5.0, often_loaded), stop_only=False),  # 5 x 3 s / 10 GB
    ]
    release = choose_release(leaving, host_copy_value(0.0, 6.0, leaving), 0, hosts)  # 6 x 3 s / 10 GB
    assert release.drop_from_host == (Unload("often"),)
    assert release.release == Sleep("leaving")
    # A copy that saves more than the leaving model's would is kept: the leaving model unloads.
    assert choose_release(leaving, host_copy_value(0.0, 4.0, leaving), 0, hosts).release == Unload("leaving")


@pytest.mark.parametrize(("name", "rho", "seed"), [("W1", 0.7, 6), ("W1", 0.5, 7)])
@pytest.mark.parametrize("policy", ["ours", "ours_preempt"])
def test_benchmark_seeds_that_dropped_a_half_awake_vllm_run_to_the_end(
        name: str, rho: float, seed: int, policy: str) -> None:
    """With the shipped 32 GiB host budget these runs aborted (`Unload(model='llm') while llm is
    half awake`), and once that was fixed they stalled: the simulator never answered a host-copy
    drop, so the dropped model stayed releasing and its queue never moved. Full benchmark runs."""
    cal = Calibration()
    w = workloads.build(cal, name, rho, seed, horizon_s=8 * HOUR, warmup_s=8 * HOUR / 16)
    s = simulate(policy, w, cal)  # raises SimulationError on an illegal action
    assert s.incomplete == 0
    assert s.starvation_violations == 0
    assert not s.unstable
    assert sum(len(v) for v in s.latency.values()) > 1000
