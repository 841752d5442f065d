"""`appliance plan`: which profile and models fit a box, and how its GPU and RAM are shared.

A pure function of (GPU snapshot, host RAM, cores, free disk, catalog, hourly price) plus a renderer;
the CLI gathers the inputs. The decisions, in order:

1. Profile: "cpu" without a GPU, else the largest class (gpu-8gb ... gpu-80gb) the card's memory reaches.
2. GPU budget = total memory - reserve (CUDA contexts, fragmentation; config gpu.reserve_gb).
3. Per service (text, image, speech, embedding): the most preferred catalog model that fits: on the GPU
   when the box has one and its VRAM estimate fits the budget alone, else on the CPU if it can run there.
   Video models are listed with what card they need.
4. Co-residence: every maximal set of the chosen GPU models whose estimates fit the budget together;
   two models never in one set must time-slice.
5. vLLM is sized to fit: its share is the budget minus the other models of its largest co-resident
   set, and gpu_memory_utilization = share / total (never vLLM's 0.9 default).
6. Host RAM: OS and daemon, each engine process, CPU-served weights, then the weights of time-sliced
   models slept in RAM, largest first moved to the disk tier (reload from disk) while RAM is short.
7. Disk for the chosen models against free disk; monthly cost = hourly price x 730 hours.

It must not probe hardware, read files or the environment (the CLI does), nor import heavy libraries.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.catalog import GIB, Catalog, CatalogModel
from appliance.defaults import VRAM_RESERVE_GB
from appliance.gpu import GpuProcess, GpuSnapshot

HOURS_PER_MONTH = 730.0
DEFAULT_RESERVE_BYTES = int(VRAM_RESERVE_GB * GIB)  # the same reserve as gpu.reserve_gb's default
SYSTEM_RAM_BYTES = 4 * GIB  # OS, the daemon, page cache headroom
ENGINE_PROCESS_RAM = {"vllm": 3 * GIB, "comfyui": 2 * GIB, "worker": 1 * GIB}
SERVICES = ("text", "image", "speech", "embedding", "transcription")
PROFILES = ((79, "gpu-80gb"), (47, "gpu-48gb"), (23, "gpu-24gb"), (15, "gpu-16gb"), (11, "gpu-12gb"), (7, "gpu-8gb"))


@dataclass(frozen=True)
class HostFacts:
    ram_bytes: int
    cores: int
    disk_free_bytes: int


@dataclass(frozen=True)
class ModelFit:
    model_id: str
    modality: str
    verdict: str  # "gpu" | "cpu" | "bigger-card" | "needs-gpu"
    vram_bytes: int
    detail: str


@dataclass(frozen=True)
class ServiceAllocation:
    service: str
    model_id: str
    engine: str
    placement: str  # "gpu" | "cpu"
    vram_bytes: int  # the model's share while resident (vLLM: weights + KV cache)
    ram_bytes: int  # engine process + weights held in host RAM
    evict_to: str  # "host" (sleep/offload to RAM) | "disk" (unload) | "-" (never evicted)
    disk_bytes: int
    gpu_memory_utilization: float | None = None


@dataclass(frozen=True)
class Plan:
    profile: str
    gpu_name: str | None
    gpu_total_bytes: int
    reserve_bytes: int
    budget_bytes: int
    host: HostFacts
    services: tuple[ServiceAllocation, ...]
    missing: tuple[tuple[str, str], ...]  # (service, why nothing serves it)
    fits: tuple[ModelFit, ...]
    co_resident: tuple[tuple[str, ...], ...]
    time_sliced: tuple[tuple[str, str], ...]
    ram_needed_bytes: int
    disk_needed_bytes: int
    hourly_price: float | None
    monthly_cost: float | None

    def service(self, name: str) -> ServiceAllocation | None:
        return next((s for s in self.services if s.service == name), None)


def profile_for(total_bytes: int) -> str:
    if total_bytes <= 0:
        return "cpu"
    gib = total_bytes / GIB
    return next((name for floor, name in PROFILES if gib >= floor), "gpu-small")


def _engine_kind(model: CatalogModel) -> str:
    return "worker" if model.engine.startswith("worker:") else model.engine


def _card_class(vram_bytes: int) -> str:
    gib = vram_bytes / GIB
    for size in (8, 12, 16, 24, 48, 80, 141):
        if gib <= size - 1.5:
            return f"{size} GB"
    return f"{gib:.0f}+ GB"


def assess(model: CatalogModel, has_gpu: bool, budget: int) -> ModelFit:
    need = model.vram_bytes
    if has_gpu and "cuda" in model.devices and need <= budget:
        return ModelFit(model.id, model.modality, "gpu", need, f"fits the GPU alone ({need / GIB:.1f} GiB)")
    if model.runs_on_cpu:
        return ModelFit(model.id, model.modality, "cpu", 0, "runs on the CPU")
    if not has_gpu:
        return ModelFit(model.id, model.modality, "needs-gpu", need,
                        f"needs a GPU with {need / GIB:.0f} GiB free ({_card_class(need)} card or larger)")  # fmt: skip
    return ModelFit(model.id, model.modality, "bigger-card", need,
                    f"needs a bigger card: {need / GIB:.0f} GiB VRAM, this card offers {budget / GIB:.1f} GiB "
                    f"({_card_class(need)} card or larger)")  # fmt: skip


def co_resident_sets(vram: dict[str, int], budget: int) -> list[tuple[str, ...]]:
    """Every maximal set of models whose estimates fit the budget together (largest sets first)."""
    ids = sorted(vram)
    fitting = [
        frozenset(combo)
        for size in range(len(ids), 0, -1)
        for combo in itertools.combinations(ids, size)
        if sum(vram[m] for m in combo) <= budget
    ]
    maximal = [s for s in fitting if not any(s < other for other in fitting)]
    return sorted((tuple(sorted(s)) for s in maximal), key=lambda s: (-len(s), s))


def make_plan(
    snapshot: GpuSnapshot,
    host_ram_bytes: int,
    cores: int,
    disk_free_bytes: int,
    catalog: Catalog,
    hourly_price: float | None,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
) -> Plan:
    has_gpu = snapshot.total_bytes > 0
    budget = max(0, snapshot.total_bytes - reserve_bytes) if has_gpu else 0
    fits = tuple(assess(m, has_gpu, budget) for m in catalog)
    verdicts = {f.model_id: f for f in fits}
    chosen: dict[str, CatalogModel] = {}
    missing: list[tuple[str, str]] = []
    for service in SERVICES:
        candidates = catalog.by_modality(service)
        pick = next((m for m in candidates if verdicts[m.id].verdict in ("gpu", "cpu")), None)
        if pick is not None:
            chosen[service] = pick
        elif candidates:
            easiest = min(candidates, key=lambda m: m.vram_bytes)
            missing.append((service, f"{easiest.id} {verdicts[easiest.id].detail}"))
        else:
            missing.append((service, "no catalog model"))
    on_gpu = {m.id: m.vram_bytes for m in chosen.values() if verdicts[m.id].verdict == "gpu"}
    sets = co_resident_sets(on_gpu, budget) if on_gpu else []
    time_sliced = tuple(
        (a, b) for a, b in itertools.combinations(sorted(on_gpu), 2) if not any(a in s and b in s for s in sets)
    )
    sliced = {m for pair in time_sliced for m in pair}
    # RAM: fixed costs first, then slept weights of time-sliced models, smallest first, while RAM lasts.
    ram_fixed = SYSTEM_RAM_BYTES + sum(ENGINE_PROCESS_RAM[_engine_kind(m)] for m in chosen.values())
    ram_fixed += sum(m.ram_bytes for m in chosen.values() if verdicts[m.id].verdict == "cpu")
    ram_used, evict_to = ram_fixed, {}
    for model in sorted((chosen_m for chosen_m in chosen.values() if chosen_m.id in sliced), key=lambda m: m.ram_bytes):
        host = ram_used + model.ram_bytes <= host_ram_bytes
        evict_to[model.id] = "host" if host else "disk"
        ram_used += model.ram_bytes if host else 0
    services = []
    for service, model in chosen.items():
        placement = verdicts[model.id].verdict
        vram = model.vram_bytes if placement == "gpu" else 0
        utilization = None
        if model.engine == "vllm" and placement == "gpu":
            mates = max((s for s in sets if model.id in s), key=lambda s: (len(s), -sum(on_gpu[m] for m in s)))
            vram = budget - sum(on_gpu[m] for m in mates if m != model.id)
            utilization = int(vram / snapshot.total_bytes * 100) / 100
        ram = ENGINE_PROCESS_RAM[_engine_kind(model)] + (
            model.ram_bytes if placement == "cpu" or evict_to.get(model.id) == "host" else 0
        )
        services.append(
            ServiceAllocation(service, model.id, model.engine, placement, vram, ram,
                              evict_to.get(model.id, "-"), model.disk_bytes, utilization)
        )  # fmt: skip
    disk_needed = sum(m.disk_bytes for m in chosen.values())
    return Plan(
        profile=profile_for(snapshot.total_bytes),
        gpu_name=snapshot.name if has_gpu else None,
        gpu_total_bytes=snapshot.total_bytes,
        reserve_bytes=reserve_bytes if has_gpu else 0,
        budget_bytes=budget,
        host=HostFacts(host_ram_bytes, cores, disk_free_bytes),
        services=tuple(services),
        missing=tuple(missing),
        fits=fits,
        co_resident=tuple(sets),
        time_sliced=time_sliced,
        ram_needed_bytes=ram_used,
        disk_needed_bytes=disk_needed,
        hourly_price=hourly_price,
        monthly_cost=None if hourly_price is None else round(hourly_price * HOURS_PER_MONTH, 2),
    )


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def format_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Plain left-aligned columns (no colours or wrapping: the same in a terminal, a log or a test)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return [line.rstrip(), "  ".join("-" * w for w in widths), *body]


def render_plan(plan: Plan) -> str:
    out: list[str] = []
    host = plan.host
    gpu = f"{plan.gpu_name or 'GPU'} {_gib(plan.gpu_total_bytes)}" if plan.gpu_total_bytes else "no GPU"
    out.append(
        f"Box: {gpu}; RAM {_gib(host.ram_bytes)}; {host.cores} cores; disk free {host.disk_free_bytes / 1e9:.1f} GB"
    )
    out.append(f"Profile: {plan.profile}")
    if plan.gpu_total_bytes:
        out.append(f"GPU budget: {_gib(plan.budget_bytes)} ({_gib(plan.reserve_bytes)} kept for CUDA contexts)")
    out.append("")
    out.append("Services")
    rows = []
    for s in plan.services:
        vram = _gib(s.vram_bytes) if s.placement == "gpu" else "-"
        if s.gpu_memory_utilization is not None:
            vram += f" (--gpu-memory-utilization {s.gpu_memory_utilization:.2f})"
        rows.append([s.service, s.model_id, s.engine, s.placement, vram, _gib(s.ram_bytes), s.evict_to])
    out += format_table(["service", "model", "engine", "on", "VRAM", "RAM", "evicted to"], rows)
    for service, why in plan.missing:
        out.append(f"{service}: not served on this box ({why})")
    if plan.co_resident:
        out.append("")
        out.append("Co-resident on the GPU:")
        out += [f"  {' + '.join(group)}" for group in plan.co_resident]
    if plan.time_sliced:
        out.append("Must time-slice (never in VRAM together):")
        out += [f"  {a} <-> {b}" for a, b in plan.time_sliced]
    elif plan.co_resident:
        out.append("No time-slicing needed: every chosen model fits at once.")
    out.append("")
    out.append("Catalog")
    out += format_table(["model", "modality", "verdict"], [[f.model_id, f.modality, f.detail] for f in plan.fits])
    out.append("")
    out.append(f"Host RAM needed: {_gib(plan.ram_needed_bytes)} of {_gib(host.ram_bytes)}")
    short = plan.disk_needed_bytes - host.disk_free_bytes
    disk = f"Disk for these models: {plan.disk_needed_bytes / 1e9:.1f} GB"
    out.append(disk + (f" (short by {short / 1e9:.1f} GB)" if short > 0 else ""))
    if plan.monthly_cost is None:
        out.append("Monthly cost: no hourly price configured (--hourly-price)")
    else:
        out.append(
            f"Monthly cost: ${plan.monthly_cost:,.2f} (${plan.hourly_price:.3f}/hour x {HOURS_PER_MONTH:.0f} hours)"
        )
    return "\n".join(out)


def load_snapshot(path: Path) -> tuple[GpuSnapshot, HostFacts]:
    """A recorded box: {"gpu": {GpuSnapshot fields}, "host": {"ram_bytes", "cores", "disk_free_bytes"}}."""
    data: dict[str, Any] = json.loads(path.read_text())  # a "comment" key is allowed and ignored
    gpu, host = dict(data["gpu"]), data["host"]
    processes = tuple(GpuProcess(**p) for p in gpu.pop("processes", []))
    snapshot = GpuSnapshot(**gpu, processes=processes)
    return snapshot, HostFacts(int(host["ram_bytes"]), int(host["cores"]), int(host["disk_free_bytes"]))
