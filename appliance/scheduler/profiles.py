"""Translation from configuration to what the residency core decides over: each model's
`ModelProfile` (footprint, host size, swap-cost estimates, `max_wait`, limits), its weights' size,
and which engines are scheduled at all (CPU workers are not; `runs_on_cpu`).

Owns: the estimates used until a model is measured (cold-start seconds per engine kind, PCIe and
disk bandwidths) and the precedence of the `max_wait` settings.
Must not: do I/O, read a clock, or hold state; measured figures replace these estimates in the
core and in `timings.py`, not here.
"""

from __future__ import annotations

import contextlib

from ..catalog import Catalog, CatalogError
from ..config import Config, ModelConfig, WorkerEngine
from ..engines.base import Adapter
from .policy import default_max_wait_s
from .types import ModelKind, ModelProfile, SwapCosts, Tier

GIB = 1 << 30
PCIE_BYTES_PER_S = 24e9  # pinned host RAM -> GPU on PCIe 4.0 x16 (bench/gpu_swap.py measures a box's own)
DISK_BYTES_PER_S = 5e9
KIND_OF = {"text": ModelKind.LLM, "image": ModelKind.IMAGE, "speech": ModelKind.SPEECH, "embedding": ModelKind.EMBED,
           "transcription": ModelKind.SPEECH}  # speech-to-text is scheduled like speech: short audio jobs
COLD_START_S = {"vllm": 90.0, "comfyui": 15.0, "worker": 5.0}


def resumable_engine(config: Config, engine: str) -> bool:
    """Engines that continue a final assistant message (`continue_final_message`): vLLM and the
    appliance's text worker."""
    eng = config.engines[engine]
    return eng.kind == "vllm" or (isinstance(eng, WorkerEngine) and eng.worker == "text")


def profile_for(mid: str, m: ModelConfig, config: Config, adapter: Adapter,
                catalog: Catalog | None = None) -> ModelProfile:
    """A model's scheduling profile from its configuration (estimates until measured)."""
    engine_kind = config.engines[m.engine].kind
    footprint = int(m.vram_gb * GIB)
    host = int((m.host_ram_gb or m.vram_gb) * GIB)
    kind = KIND_OF[m.modality]
    costs = SwapCosts(
        wake_s=0.3 + host / PCIE_BYTES_PER_S,
        cold_start_s=COLD_START_S.get(engine_kind, 10.0) + footprint / DISK_BYTES_PER_S,
        load_s=1.5 + footprint / DISK_BYTES_PER_S,
        release_s=0.05,
    )
    concurrency = m.concurrency or (32 if kind is ModelKind.LLM else 1)
    return ModelProfile(
        id=mid,
        kind=kind,
        footprint_bytes=max(1, footprint),
        host_bytes=max(1, host),
        costs=costs,
        max_wait_s=max_wait_for(m, config, kind),
        keep_alive_s=m.keep_alive_s,
        pinned=m.pinned,
        queue_limit=m.queue_limit,
        concurrency=concurrency,
        supports_sleep=Tier.HOST in adapter.releasable,
        supports_unload=Tier.DISK in adapter.releasable,
        # Resuming a stream needs continue_final_message (vLLM's, or the text worker's); the
        # gateway stitches the stream.
        preemptible=config.scheduler.preemption and kind is ModelKind.LLM and resumable_engine(config, m.engine),
        engine=m.engine,
        release_unloads_process=adapter.release_unloads_all,
        prefetch_bytes=prefetch_bytes(m, footprint, adapter, catalog),
    )


def weights_bytes(m: ModelConfig, catalog: Catalog | None) -> int:
    """A model's weights alone: `models.X.weights_gb`, else its catalog entry's size on disk; 0
    when unknown."""
    if m.weights_gb:
        return int(m.weights_gb * GIB)
    if catalog is not None and m.catalog:
        with contextlib.suppress(CatalogError, KeyError):
            return catalog.get(m.catalog).disk_bytes
    return 0


def prefetch_bytes(m: ModelConfig, footprint: int, adapter: Adapter, catalog: Catalog | None) -> int:
    """The weights a staged wake brings back first, for engines that wake in stages (vLLM with
    sleep mode); 0 when unknown or when the weights are not smaller than the footprint (nothing
    would be left to wake)."""
    weights = weights_bytes(m, catalog) if adapter.supports_prefetch else 0
    return weights if 0 < weights < footprint else 0


def max_wait_for(m: ModelConfig, config: Config, kind: ModelKind) -> float:
    """The model's own setting, else the scheduler's, else the benchmarked default for its kind."""
    if m.max_wait_s is not None:
        return m.max_wait_s
    if config.scheduler.max_wait_s is not None:
        return config.scheduler.max_wait_s
    return default_max_wait_s(kind, config.scheduler.preemption)



def runs_on_cpu(config: Config, engine: str, *, has_gpu: bool) -> bool:
    eng = config.engines[engine]
    if not isinstance(eng, WorkerEngine):
        return False
    return eng.device == "cpu" or (eng.device == "auto" and not has_gpu)


