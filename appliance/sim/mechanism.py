"""How long each residency action takes under the mechanism a policy has.

Owns: the mapping from (mechanism, action, model) to seconds, read from the calibration.
- SLEEP_WAKE: ours and B3: vLLM sleep level 1 / worker offload; wake from host RAM.
- OLLAMA: B2: unload by stopping the runner, load from disk at the disk bandwidth.
- COLD: B1: llama-swap stops the process and cold-starts the next one.
- FREE: every transition takes no time (the free-swap ablation and LBps/LB2).

Must not: decide anything.
"""

from __future__ import annotations

from enum import StrEnum

from appliance.scheduler.events import Action, Prefetch, Sleep, Start, Stop, Unload, Wake
from appliance.scheduler.types import ModelProfile, SwapCosts
from appliance.sim.calibration import Calibration


class Mechanism(StrEnum):
    SLEEP_WAKE = "sleep_wake"
    OLLAMA = "ollama"
    COLD = "cold"
    FREE = "free"


def transition_s(mech: Mechanism, cal: Calibration, action: Action, engine_up: bool, staged: bool = False) -> float:
    """`staged`: the model's weights are already back (a Prefetch), so a Wake maps the rest."""
    if mech is Mechanism.FREE:
        return 0.0
    m = cal.model(action.model)
    match action:
        case Wake():
            return m.staged_wake_s if staged else cal.wake_s(m.id)
        case Prefetch():
            return cal.wake_s(m.id)
        case Start():
            if mech is Mechanism.OLLAMA:
                return cal.ollama_load_s(m.id)
            if mech is Mechanism.SLEEP_WAKE and engine_up:
                return cal.disk_load_s(m.id)
            return m.cold_start_s
        case Sleep() | Unload():
            return m.release_s
        case Stop():
            return cal.ollama_unload_s if mech is Mechanism.OLLAMA else m.stop_s
    raise ValueError(f"{action!r} is not a residency transition")


def profile_costs(mech: Mechanism, cal: Calibration, model_id: str) -> SwapCosts:
    """The swap-cost estimates a scheduler is given: the true costs of its mechanism."""
    if mech is Mechanism.FREE:
        return SwapCosts(0.0, 0.0, 0.0, 0.0)
    m = cal.model(model_id)
    return SwapCosts(
        wake_s=cal.wake_s(model_id),
        cold_start_s=m.cold_start_s,
        load_s=cal.disk_load_s(model_id),
        release_s=m.release_s,
    )


def profiles(
    cal: Calibration,
    mech: Mechanism,
    typical_service_s: dict[str, float],
    *,
    preemptible_llm: bool = False,
    max_wait_s: dict[str, float] | None = None,
    queue_limit: int = 1_000_000,
) -> list[ModelProfile]:
    """Model profiles for the simulated box (queue limits high: the benchmark rejects nothing)."""
    out = []
    for m in cal.models:
        is_llm = m.kind.value == "llm"
        out.append(
            ModelProfile(
                id=m.id,
                kind=m.kind,
                footprint_bytes=cal.vram_bytes(m.id),
                prefetch_bytes=cal.prefetch_bytes(m.id) if mech in (Mechanism.SLEEP_WAKE, Mechanism.FREE) else 0,
                host_bytes=m.size_bytes,
                costs=profile_costs(mech, cal, m.id),
                max_wait_s=(max_wait_s or {}).get(m.id, m.max_wait_s),
                queue_limit=queue_limit,
                concurrency=m.concurrency,
                preemptible=preemptible_llm and is_llm,
                typical_service_s=typical_service_s.get(m.id, 10.0),
            )
        )
    return out
