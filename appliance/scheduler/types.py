"""Value types of the residency scheduler: model profiles, requests and tiers.

Owns: the frozen descriptions the core decides over. A `ModelProfile` is what the
catalog and configuration say about a model (footprint estimate, swap costs, limits);
a `Request` is one client call waiting for a model.

Must not: hold mutable runtime state (that is `state.ModelSlot`, owned by the core),
read configuration files, or import anything outside the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

GB = 1_000_000_000
"""Decimal gigabyte: model sizes are quoted this way by the catalogs."""


class ModelKind(StrEnum):
    """What a model serves; decides batching and whether its jobs may be preempted."""

    LLM = "llm"
    IMAGE = "image"
    SPEECH = "speech"
    EMBED = "embed"
    OTHER = "other"


class Tier(StrEnum):
    """Where a model's weights are: the one tier type of the scheduler and the engine adapters
    (`Adapter.release(tier)` moves weights down to HOST or DISK).

    DISK covers both "engine stopped" and "engine up, unloaded".
    """

    VRAM = "vram"
    HOST = "host"  # slept / offloaded to (pinned) host RAM: fast to bring back
    DISK = "disk"  # dropped from memory, on local disk
    ABSENT = "absent"  # not downloaded


@dataclass(frozen=True, slots=True)
class SwapCosts:
    """Estimated seconds for each residency transition (replaced by a calibration on a real box).

    wake_s: host RAM -> VRAM (vLLM sleep level 1 wake, worker /load from pinned RAM).
    cold_start_s: process start plus load from disk (vLLM: compile and CUDA-graph capture).
    load_s: disk -> VRAM into an engine whose process is already up (unloaded, not stopped).
    release_s: VRAM -> host or dropped, once the engine is idle.
    """

    wake_s: float
    cold_start_s: float
    load_s: float
    release_s: float


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """Everything the core needs to know about one model before it has measured anything.

    footprint_bytes is the catalog's VRAM estimate; a measured footprint replaces it.
    keep_alive_s None means the model stays in VRAM until memory is needed.
    concurrency is how many requests the engine runs at once (continuous batching for
    an LLM, one job at a time for image and speech engines).
    preemptible means running jobs may be aborted and resumed (only LLM streams): at a switch
    when stream preemption is enabled in the core's settings, and at a drain deadline in any case.
    engine names the process that serves the model when several models share one (one ComfyUI
    for two checkpoints); empty means a process of its own. release_unloads_process: releasing
    any of that process's models unloads all of them (ComfyUI's /free), so they are evicted
    together.
    prefetch_bytes: what a weights-only wake adds in VRAM (vLLM `/wake_up?tags=weights`): a
    sleeping model can bring its weights back beside a resident model it does not fit beside
    whole, while that model still works, and the later wake only allocates the rest (its KV
    cache). 0: the model has no staged wake. A model whose weights are back can only go down
    again by stopping its engine (vLLM cannot sleep half awake).
    """

    id: str
    kind: ModelKind
    footprint_bytes: int
    host_bytes: int
    costs: SwapCosts
    max_wait_s: float = 30.0
    keep_alive_s: float | None = None
    pinned: bool = False
    queue_limit: int = 64
    concurrency: int = 1
    supports_sleep: bool = True
    supports_unload: bool = True
    preemptible: bool = False
    downloaded: bool = True
    typical_service_s: float = 10.0
    engine: str = ""
    release_unloads_process: bool = False
    prefetch_bytes: int = 0

    def __post_init__(self) -> None:
        if self.footprint_bytes <= 0:
            raise ValueError(f"model {self.id}: footprint_bytes must be positive")
        if self.concurrency < 1:
            raise ValueError(f"model {self.id}: concurrency must be at least 1")
        if self.queue_limit < 1:
            raise ValueError(f"model {self.id}: queue_limit must be at least 1")
        if self.max_wait_s <= 0:
            raise ValueError(f"model {self.id}: max_wait_s must be positive")
        if not 0 <= self.prefetch_bytes < self.footprint_bytes:
            raise ValueError(f"model {self.id}: prefetch_bytes must be at least 0 and below the footprint")
        if self.preemptible and self.kind is not ModelKind.LLM:
            raise ValueError(f"model {self.id}: only LLM streams can be preempted")


@dataclass(frozen=True, slots=True)
class Request:
    """One client call. The loop maps `id` to the future the gateway is waiting on.

    The core never orders or prices requests by their own size: drains and Retry-After come
    from the service times it measured (`ServiceHistory`, the slot's moving average).
    preemptible: the caller can abort this request and resume it (a chat or completion the
    gateway can continue, streamed or not); only then, and only when the model is preemptible and
    preemption is on, may it be preempted.
    resident_only: the request is served only by a model already resident and steady (a fleet
    router's `X-Route-Policy: resident-only`); otherwise it is answered at once (409), before
    anything is loaded or evicted for it.
    """

    id: str
    model: str
    arrival: float
    preemptible: bool = True
    resident_only: bool = False
