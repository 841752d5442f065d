"""The simulator drives the very same core: invariants, the starvation bound, legality checks."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.scheduler import Dispatch, Event, PolicySettings, Prefetch, RequestArrived, Sleep, Wake
from appliance.scheduler.events import Action
from appliance.sim import workloads
from appliance.sim.calibration import Calibration, load_calibration
from appliance.sim.mechanism import Mechanism, transition_s
from appliance.sim.policies import simulate
from appliance.sim.runner import SimConfig, SimulationError, run
from appliance.sim.workloads import RequestSpec, Workload

CAL = Calibration()
HOUR = 3600.0


@pytest.mark.parametrize(("name", "rho"), [("W1", 0.7), ("W2cv4", 0.7), ("W3s", 0.7), ("W4", 0.5)])
@pytest.mark.parametrize("policy", ["ours", "ours_preempt"])
def test_short_run_completes_everything_within_the_bound(name: str, rho: float, policy: str) -> None:
    w = workloads.build(CAL, name, rho, seed=1, horizon_s=1.5 * HOUR, warmup_s=0.25 * HOUR)
    s = simulate(policy, w, CAL)  # raises SimulationError on any illegal action or VRAM over budget
    assert s.incomplete == 0
    assert s.starvation_violations == 0
    assert sum(len(v) for v in s.latency.values()) > 100
    assert not s.unstable


def random_workload(rng: random.Random, horizon_s: float) -> Workload:
    """Arbitrary mixes, rates and bursts, with job sizes far from the benchmark's."""
    roots: list[RequestSpec] = []
    t = 0.0
    weights = [rng.random() for _ in range(3)]
    rate = rng.uniform(0.02, 0.12)
    n = 0
    while True:
        t += rng.expovariate(rate)
        if t >= horizon_s:
            break
        model = rng.choices(["llm", "image", "speech"], weights)[0]
        for _ in range(rng.choice([1, 1, 1, 4])):  # sometimes a burst
            n += 1
            if model == "llm":
                prompt, output = rng.randint(10, 3000), rng.randint(1, 2048)
                work = prompt / CAL.llm.prefill_tps + output / CAL.llm.decode_tps
                roots.append(RequestSpec(str(n), model, t, work, prompt, output))
            else:
                work = rng.expovariate(1 / 6.0) + 0.1
                roots.append(RequestSpec(str(n), model, t, work))
    return Workload("random", 0.0, 0, tuple(roots), horizon_s, 0.0)


@pytest.mark.parametrize("case", range(12))
def test_starvation_bound_holds_over_random_workloads(case: int) -> None:
    """Property: for every request, the time from becoming its model's oldest waiter to
    dispatch, less its model's serving time and its own swap, stays within
    max_wait + 2L + one release and wake of every model (L: the longest job meanwhile)."""
    rng = random.Random(f"starvation/{case}")
    w = random_workload(rng, horizon_s=2 * HOUR)
    waits = {m: rng.choice([5.0, 15.0, 30.0, 90.0]) for m in ("llm", "image", "speech")}
    policy = rng.choice(["ours", "ours_preempt", "ours_free"])
    settings = PolicySettings(drain_below_s=rng.choice([None, 3.0]), one_engine_at_a_time=rng.random() < 0.75)
    s = simulate(policy, w, CAL, settings=settings, max_wait_s=waits)
    assert s.incomplete == 0
    assert s.starvation_violations == 0, f"case {case}: {policy} {waits}"


def test_the_starvation_metric_is_not_vacuous() -> None:
    """llama-swap's FIFO serves the resident model first and cold-starts: it breaks the bound."""
    w = workloads.build(CAL, "W1", 0.3, seed=0, horizon_s=2 * HOUR, warmup_s=0.25 * HOUR)
    assert simulate("B1", w, CAL).starvation_violations > 0


def test_time_sliced_gpu_and_a_gpu_per_model_bracket_the_policy() -> None:
    w = workloads.build(CAL, "W1", 0.5, seed=2, horizon_s=2 * HOUR, warmup_s=0.25 * HOUR)
    p95 = {}
    for policy in ("LB2", "LBps", "ours"):
        s = simulate(policy, w, CAL)
        every = sorted(x for v in s.latency.values() for x in v)
        p95[policy] = every[int(0.95 * (len(every) - 1))]
    assert p95["LB2"] < p95["LBps"] and p95["LB2"] < p95["ours"]


class _Scripted:
    """A scheduler that answers every arrival with fixed actions (to provoke the runner's checks)."""

    def __init__(self, actions: list[Action]) -> None:
        self.actions = actions

    def handle(self, event: Event) -> list[Action]:
        return self.actions if isinstance(event, RequestArrived) else []

    def next_deadline(self) -> float | None:
        return None


def one_request_workload() -> Workload:
    return Workload("one", 0.0, 0, (RequestSpec("1", "image", 1.0, 6.0),), HOUR, 0.0)


def test_runner_refuses_dispatch_to_a_model_not_in_vram() -> None:
    with pytest.raises(SimulationError, match="dispatch"):
        run(one_request_workload(), _Scripted([Dispatch("image", "1")]), CAL, SimConfig(Mechanism.SLEEP_WAKE))


def test_runner_refuses_vram_over_budget() -> None:
    config = SimConfig(Mechanism.SLEEP_WAKE, initial_state={"llm": "host", "image": "host"})
    with pytest.raises(SimulationError, match="over the budget"):
        run(one_request_workload(), _Scripted([Wake("llm"), Wake("image")]), CAL, config)


def test_runner_refuses_to_sleep_a_half_awake_llm() -> None:
    config = SimConfig(Mechanism.SLEEP_WAKE, initial_state={"llm": "host"})
    with pytest.raises(SimulationError, match="half awake"):
        run(one_request_workload(), _Scripted([Prefetch("llm"), Sleep("llm")]), CAL, config)


def test_a_prefetch_moves_the_weights_and_its_wake_only_maps_the_kv_cache() -> None:
    llm = CAL.model("llm")
    assert CAL.prefetch_bytes("llm") == llm.size_bytes and CAL.prefetch_bytes("speech") == 0
    assert CAL.prefetch_bytes("llm") + CAL.vram_bytes("speech") <= CAL.vram_budget_bytes  # 19.3 + 3.4 GB
    assert transition_s(Mechanism.SLEEP_WAKE, CAL, Prefetch("llm"), True) == CAL.wake_s("llm")
    assert transition_s(Mechanism.SLEEP_WAKE, CAL, Wake("llm"), True, staged=True) == llm.staged_wake_s == 0.1


def test_calibration_is_replaceable_from_json_and_toml(tmp_path: Path) -> None:
    js = tmp_path / "box.json"
    js.write_text(json.dumps({"host_bandwidth": 12e9, "llm": {"decode_tps": 40.0},
                              "models": {"image": {"size_bytes": 8_100_000_000}}}))
    cal = load_calibration(js)
    assert cal.llm.decode_tps == 40.0 and cal.host_bandwidth == 12e9
    assert cal.model("image").size_bytes == 8_100_000_000
    assert cal.wake_s("image") == pytest.approx(0.3 + 8.1e9 / 12e9)
    toml = tmp_path / "box.toml"
    toml.write_text('vram_reserve_bytes = 2000000000\n[speech]\nreal_time_factor = 0.2\n')
    cal = load_calibration(toml)
    assert cal.vram_budget_bytes == 24 * 2**30 - 2_000_000_000 and cal.speech.real_time_factor == 0.2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"llm": {"decode_tokens": 1}}))
    with pytest.raises(ValueError, match="decode_tokens"):
        load_calibration(bad)


def test_llm_footprint_includes_its_kv_cache_so_it_cannot_sit_beside_xtts() -> None:
    llm, speech = CAL.vram_bytes("llm"), CAL.vram_bytes("speech")
    assert llm == CAL.model("llm").size_bytes + CAL.llm.kv_tokens * CAL.llm.kv_bytes_per_token
    assert llm + speech > CAL.vram_budget_bytes
    assert CAL.vram_bytes("image") + speech <= CAL.vram_budget_bytes


@pytest.mark.parametrize(("name", "rho"), [("W1", 0.5), ("W2cv2", 0.7), ("W4", 0.5)])
def test_offered_load_matches_rho(name: str, rho: float) -> None:
    w = workloads.build(CAL, name, rho, seed=3, horizon_s=40 * HOUR)
    offered = sum(s.work_s for s in w.all_specs()) / w.horizon_s
    assert offered == pytest.approx(rho, rel=0.12)


def test_w1_mix_and_w2_bursts() -> None:
    w1 = workloads.build(CAL, "W1", 0.7, seed=0, horizon_s=20 * HOUR)
    counts = {m: sum(1 for s in w1.roots if s.model == m) for m in ("llm", "image", "speech")}
    assert counts["speech"] / counts["image"] == pytest.approx(3.0, rel=0.15)
    assert counts["llm"] / counts["image"] == pytest.approx(2.0, rel=0.15)
    w2 = workloads.build(CAL, "W2cv4", 0.5, seed=0, horizon_s=4 * HOUR)
    images = [s.arrival for s in w2.roots if s.model == "image"]
    assert len(images) % 4 == 0 and all(images[i] == images[i + 3] for i in range(0, len(images), 4))


def test_w3s_sessions_chain_chat_then_speech() -> None:
    w = workloads.build(CAL, "W3s", 0.5, seed=0, horizon_s=2 * HOUR)
    sessions = [s for s in w.roots if s.model == "llm"]
    assert sessions and all(s.follow for s in sessions)
    specs = w.all_specs()
    share_images = sum(1 for s in specs if s.model == "image") / len(specs)
    assert share_images == pytest.approx(0.10, abs=0.04)


def test_free_swaps_cost_nothing() -> None:
    w = workloads.build(CAL, "W4", 0.5, seed=0, horizon_s=1 * HOUR, warmup_s=0.0)
    s = simulate("ours_free", w, replace(CAL))
    assert s.swap_time_fraction == 0.0 and s.swaps_per_hour > 0
