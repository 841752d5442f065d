"""How the residency loop turns per-engine GPU readings into per-model figures for the core."""

from __future__ import annotations

from appliance.scheduler.attribution import attribute_usage
from appliance.scheduler.snapshot import SlotView
from appliance.scheduler.types import GB, Tier


def view(tier: Tier, footprint_gb: float) -> SlotView:
    return SlotView(tier, "steady", True, False, 0, 0, int(footprint_gb * GB))


def test_one_model_per_engine_gets_its_engine_reading() -> None:
    views = {"chat": view(Tier.VRAM, 20), "img": view(Tier.HOST, 15)}
    used = attribute_usage({"vllm": 19 * GB, "comfyui": GB // 2}, {"vllm": ["chat"], "comfyui": ["img"]}, views)
    assert used == {"chat": 19 * GB, "img": GB // 2}


def test_an_engine_shared_by_two_models_is_counted_once() -> None:
    models_of = {"comfyui": ["turbo", "plain", "other"]}
    views = {"turbo": view(Tier.VRAM, 10), "plain": view(Tier.VRAM, 5), "other": view(Tier.DISK, 8)}
    used = attribute_usage({"comfyui": 12 * GB}, models_of, views)
    assert sum(used.values()) == 12 * GB  # never 2 x 12 GB of "known" memory
    assert used == {"turbo": 8 * GB, "plain": 4 * GB}  # in proportion to their footprints
    assert "other" not in used  # a model on disk learns nothing from its engine's bytes


def test_an_engine_with_no_resident_model_still_counts_once() -> None:
    views = {"a": view(Tier.HOST, 10), "b": view(Tier.DISK, 5)}
    assert attribute_usage({"e": 3 * GB}, {"e": ["a", "b"]}, views) == {"a": 3 * GB}
