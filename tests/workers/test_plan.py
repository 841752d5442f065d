"""`appliance plan` as a pure function: the recorded RTX 3090 box, other card sizes, a CPU-only box."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.catalog import GIB, load_catalog
from appliance.gpu import DeclaredProbe, GpuSnapshot
from appliance.plan import Plan, load_snapshot, make_plan, render_plan

DATA = Path(__file__).resolve().parents[1] / "data"
QWEN32, QWEN7, QWEN05 = "qwen2.5-32b-instruct-awq", "qwen2.5-7b-instruct-awq", "qwen2.5-0.5b-instruct"
SD_COMFY, XTTS, PIPER, MINILM = "sd3.5-large-turbo-comfyui", "xtts-v2", "piper-en-us-joe-medium", "all-minilm-l6-v2"
SD_TURBO = "sd-turbo"
TURBO, WHISPER_SMALL = "whisper-large-v3-turbo", "whisper-small"


def card(total_gib: float, name: str = "Test GPU") -> GpuSnapshot:
    total = int(total_gib * GIB)
    return GpuSnapshot(kind="nvml", name=name, total_bytes=total, free_bytes=total, used_bytes=0)


def plan_for(gpu: GpuSnapshot, ram_gib: float = 64, price: float | None = 0.2) -> Plan:
    return make_plan(gpu, int(ram_gib * GIB), 16, 900 * 10**9, load_catalog(), price)


def test_recorded_rtx3090_box() -> None:
    gpu, host = load_snapshot(DATA / "rtx3090_box.json")
    assert (gpu.name, gpu.total_bytes, host.ram_bytes, host.cores) == (
        "NVIDIA GeForce RTX 3090",
        24 * GIB,
        64 * GIB,
        16,
    )
    plan = make_plan(gpu, host.ram_bytes, host.cores, host.disk_free_bytes, load_catalog(), 0.20)
    assert plan.profile == "gpu-24gb"
    assert plan.budget_bytes == int(22.5 * GIB)
    allocation = {s.service: (s.model_id, s.engine, s.placement, round(s.vram_bytes / GIB, 2), s.evict_to)
                  for s in plan.services}  # fmt: skip
    assert allocation == {
        "text": (QWEN32, "vllm", "gpu", 22.2, "host"),  # the budget minus the embedder it shares the card with
        "image": (SD_COMFY, "comfyui", "gpu", 18.0, "host"),
        "speech": (XTTS, "worker:speech", "gpu", 3.0, "host"),
        "embedding": (MINILM, "worker:embed", "gpu", 0.3, "-"),
        "transcription": (TURBO, "worker:stt", "gpu", 2.5, "host"),
    }
    text = plan.service("text")
    assert text is not None and text.gpu_memory_utilization == 0.92  # 22.2 of 24 GiB, rounded down
    assert plan.co_resident == ((MINILM, SD_COMFY, TURBO), (MINILM, SD_COMFY, XTTS), (MINILM, TURBO, XTTS),
                                (MINILM, QWEN32))  # fmt: skip
    assert plan.time_sliced == ((QWEN32, SD_COMFY), (QWEN32, TURBO), (QWEN32, XTTS))
    video = {f.model_id: f.verdict for f in plan.fits if f.modality == "video"}
    assert video == {"hunyuanvideo": "bigger-card", "mochi-1-preview": "bigger-card"}
    assert round(plan.ram_needed_bytes / GIB, 1) == 51.7  # 4 system + 3+2+1+1+1 processes + 18.5+17+2.5+1.7 slept
    assert plan.monthly_cost == 146.0 and plan.missing == ()
    out = render_plan(plan)
    for line in (
        "Profile: gpu-24gb",
        "GPU budget: 22.5 GiB (1.5 GiB kept for CUDA contexts)",
        "--gpu-memory-utilization 0.92",
        f"{QWEN32} <-> {SD_COMFY}",
        "hunyuanvideo                 video          needs a bigger card: 60 GiB VRAM, this card offers 22.5 GiB",
        "mochi-1-preview              video          needs a bigger card: 40 GiB VRAM, this card offers 22.5 GiB",
        "(80 GB card or larger)",
        "(48 GB card or larger)",
        "Host RAM needed: 51.7 GiB of 64.0 GiB",
        "Monthly cost: $146.00 ($0.200/hour x 730 hours)",
    ):
        assert line in out, line


def test_cpu_only_box_serves_every_modality() -> None:
    plan = plan_for(DeclaredProbe(0).snapshot(), ram_gib=24, price=None)
    assert plan.profile == "cpu" and plan.budget_bytes == 0
    assert {s.service: (s.model_id, s.placement) for s in plan.services} == {
        "text": (QWEN05, "cpu"), "image": (SD_TURBO, "cpu"), "speech": (PIPER, "cpu"), "embedding": (MINILM, "cpu"),
        "transcription": (WHISPER_SMALL, "cpu"),
    }  # fmt: skip
    assert plan.missing == ()
    assert all(f.verdict == "needs-gpu" for f in plan.fits if f.modality == "video")
    assert plan.co_resident == () and plan.time_sliced == ()
    assert "no hourly price configured" in render_plan(plan)


def test_48gb_card_holds_everything_at_once() -> None:
    plan = plan_for(card(48))
    assert plan.profile == "gpu-48gb" and plan.time_sliced == ()
    assert plan.co_resident == ((MINILM, QWEN32, SD_COMFY, TURBO, XTTS),)
    text = plan.service("text")
    assert text is not None and round(text.vram_bytes / GIB, 1) == round(46.5 - 21.3 - 2.5, 1)
    assert {f.model_id: f.verdict for f in plan.fits if f.modality == "video"}["mochi-1-preview"] == "gpu"
    assert "No time-slicing needed" in render_plan(plan)


def test_80gb_card_runs_hunyuanvideo() -> None:
    fits = {f.model_id: f.verdict for f in plan_for(card(80)).fits}
    assert fits["hunyuanvideo"] == "gpu" and fits["mochi-1-preview"] == "gpu"


@pytest.mark.parametrize(("total", "profile", "text_model"), [(12, "gpu-12gb", QWEN7), (8, "gpu-8gb", QWEN05)])
def test_smaller_cards_pick_smaller_text_models(total: int, profile: str, text_model: str) -> None:
    plan = plan_for(card(total))
    text = plan.service("text")
    assert plan.profile == profile and text is not None and text.model_id == text_model
    image = plan.service("image")  # SD3.5 needs 24 GB; the small SD-Turbo serves images on the GPU instead
    assert image is not None and (image.model_id, image.placement) == (SD_TURBO, "gpu") and plan.missing == ()


def test_short_on_ram_the_largest_sleeper_goes_to_disk() -> None:
    plan = plan_for(card(24), ram_gib=36)  # 12 GiB of processes, then 1.7 + 2.5 + 17 slept fit; 18.5 more does not
    tiers = {s.model_id: s.evict_to for s in plan.services}
    assert tiers[QWEN32] == "disk" and tiers[SD_COMFY] == "host" and tiers[XTTS] == "host" and tiers[TURBO] == "host"
    assert plan.ram_needed_bytes <= 36 * GIB
