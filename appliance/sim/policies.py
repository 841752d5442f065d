"""The policies the benchmark compares, each wired to its scheduler and mechanism.

Owns: the table from a policy name to (scheduler, simulator configuration):
- ours: the residency core with sleep/wake; a `_free` suffix gives it free swaps and a
  `_preempt` suffix enables LLM stream preemption (ours_preempt_free has both);
- B1 llama-swap FIFO with cold starts; B2 Ollama-like with stop/load from disk;
  B3 Ollama-like with sleep/wake;
- LBps one time-sliced GPU with every model resident and free swaps; LB2 a GPU per model.
Also `simulate`, which runs one policy on one workload and summarises it.

Must not: change the policies' behaviour; tuning belongs in the core's settings.
"""

from __future__ import annotations

from dataclasses import replace

from appliance.scheduler.core import ResidencyCore
from appliance.scheduler.memory import MemoryBudget
from appliance.scheduler.policy import PREEMPTION_MAX_WAIT_S, PolicySettings
from appliance.scheduler.types import Tier
from appliance.sim.baselines import AllResident, LlamaSwapFifo, OllamaLike
from appliance.sim.calibration import Calibration
from appliance.sim.mechanism import Mechanism, profiles
from appliance.sim.observe import RunSummary
from appliance.sim.runner import Scheduler, SimConfig, run
from appliance.sim.workloads import Workload, mean_service_s

OURS = ("ours", "ours_free", "ours_preempt", "ours_preempt_free")
BASELINES = ("B1", "B2", "B3")
REFERENCES = ("LBps", "LB2")
POLICIES = OURS + BASELINES + REFERENCES

DEFAULT_SETTINGS = PolicySettings()


def max_wait_for(policy: str, cal: Calibration, override: dict[str, float] | None = None) -> dict[str, float]:
    waits = {m.id: m.max_wait_s for m in cal.models}
    if "preempt" in policy.split("_"):
        waits.update({m.id: PREEMPTION_MAX_WAIT_S[m.kind] for m in cal.models if m.kind in PREEMPTION_MAX_WAIT_S})
    waits.update(override or {})
    return waits


def prewarmed_in_host(cal: Calibration) -> list[str]:
    """The models that sleep in host RAM when a run begins (the daemon started their engines and
    slept them), in calibration order while the host-RAM budget holds their weights; the others
    begin on disk with their engines stopped."""
    out: list[str] = []
    used = 0
    for m in cal.models:
        if used + m.size_bytes <= cal.host_budget_bytes:
            out.append(m.id)
            used += m.size_bytes
    return out


def build(
    policy: str,
    cal: Calibration,
    settings: PolicySettings = DEFAULT_SETTINGS,
    max_wait_s: dict[str, float] | None = None,
) -> tuple[Scheduler, SimConfig]:
    models = [m.id for m in cal.models]
    sizes = {m.id: cal.vram_bytes(m.id) for m in cal.models}
    weights = {m.id: m.size_bytes for m in cal.models}
    prewarmed = dict.fromkeys(prewarmed_in_host(cal), "host")
    options = set(policy.split("_")[1:])
    if policy.split("_")[0] == "ours" and options <= {"free", "preempt"}:
        mech = Mechanism.FREE if "free" in options else Mechanism.SLEEP_WAKE
        preempt = "preempt" in options
        waits = max_wait_for(policy, cal, max_wait_s)
        core = ResidencyCore(
            profiles(cal, mech, mean_service_s(cal), preemptible_llm=preempt, max_wait_s=waits),
            MemoryBudget(cal.vram_budget_bytes, cal.host_budget_bytes),
            replace(settings, preemption=preempt),
            tiers=dict.fromkeys(prewarmed, Tier.HOST),
        )
        return core, SimConfig(mech, cal.gpu_time_sliced, initial_state=prewarmed)
    if policy == "B1":
        return LlamaSwapFifo(models), SimConfig(Mechanism.COLD, cal.gpu_time_sliced)
    if policy == "B2":
        sched = OllamaLike(sizes, weights, cal.vram_budget_bytes, cal.host_budget_bytes, sleep=False)
        return sched, SimConfig(Mechanism.OLLAMA, cal.gpu_time_sliced)
    if policy == "B3":
        sched = OllamaLike(
            sizes, weights, cal.vram_budget_bytes, cal.host_budget_bytes, sleep=True, in_host=frozenset(prewarmed)
        )
        return sched, SimConfig(Mechanism.SLEEP_WAKE, cal.gpu_time_sliced, initial_state=prewarmed)
    if policy in REFERENCES:
        resident = dict.fromkeys(models, "vram")
        config = SimConfig(Mechanism.FREE, policy == "LBps", check_budget=False, initial_state=resident)
        return AllResident(), config
    raise ValueError(f"unknown policy {policy!r}")


def simulate(
    policy: str,
    workload: Workload,
    cal: Calibration,
    settings: PolicySettings = DEFAULT_SETTINGS,
    abort_backlog: int | None = None,
    max_wait_s: dict[str, float] | None = None,
) -> RunSummary:
    scheduler, config = build(policy, cal, settings, max_wait_s)
    config.abort_backlog = abort_backlog
    obs = run(workload, scheduler, cal, config)
    max_wait = max_wait_for(policy, cal, max_wait_s)
    swap_term = 0.0 if config.mechanism is Mechanism.FREE else cal.release_and_wake_s()
    return obs.summary(max_wait, swap_term)
