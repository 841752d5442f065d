"""The routing plan (appliance.router.plan): pure, driven with registry rows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from appliance.router.plan import BoxView, RoutePlan, compatibility, plan_doc, plan_from_doc, plan_routes

GB = 1 << 30


def box(box_id: str, models: dict[str, str], free_gb: int = 10, state: str = "ready", port: int = 9000,
        loadable: bool = True) -> BoxView:
    summary: dict[str, dict[str, Any]] = {m: {"tier": t, "loadable": loadable, "queue": 0} for m, t in models.items()}
    return BoxView(box_id, "10.0.0.1", port, False, state, summary, free_gb * GB)


def test_a_model_goes_to_the_boxes_holding_it_in_gpu_memory_with_resident_only() -> None:
    plan = plan_routes([box("a", {"llama": "vram", "sd": "disk"}), box("b", {"llama": "vram"}),
                        box("c", {"llama": "disk", "sd": "vram"})], RoutePlan())
    assert plan.members["llama"] == {"a", "b"}
    assert plan.members["sd"] == {"c"}
    assert plan.resident == {"llama", "sd"}


def test_a_warm_holder_is_preferred_to_loading_elsewhere() -> None:
    plan = plan_routes([box("a", {"tts": "host"}, free_gb=1), box("b", {"tts": "disk"}, free_gb=40)], RoutePlan())
    assert plan.members["tts"] == {"a"}
    assert "tts" not in plan.resident  # no box holds it on the GPU: it may load


def test_a_model_no_box_holds_goes_to_the_box_with_the_most_free_vram() -> None:
    boxes = [box("a", {"whisper": "disk"}, free_gb=5), box("b", {"whisper": "disk"}, free_gb=30),
             box("c", {"whisper": "absent"}, free_gb=20)]
    plan = plan_routes(boxes, RoutePlan())
    assert plan.members["whisper"] == {"b"}
    assert plan.fallback == "b"


def test_a_box_that_cannot_load_the_model_is_not_chosen() -> None:
    plan = plan_routes([box("a", {"m": "disk"}, free_gb=50, loadable=False), box("b", {"m": "disk"}, free_gb=1)],
                       RoutePlan())
    assert plan.members["m"] == {"b"}


def test_boxes_not_ready_serve_nothing_and_their_slots_follow_their_state() -> None:
    plan = plan_routes([box("a", {"m": "vram"}, state="draining"), box("b", {"m": "disk"}),
                        box("c", {"m": "vram"}, state="starting")], RoutePlan())
    assert plan.members["m"] == {"b"}
    states = {s.box_id: s.admin for s in plan.slots if s is not None}
    assert states == {"a": "drain", "b": "ready", "c": "maint"}


def test_slots_and_backends_are_stable_across_syncs_and_reused_when_freed() -> None:
    first = plan_routes([box("a", {"x": "vram"}), box("b", {"y": "vram"})], RoutePlan())
    second = plan_routes([box("b", {"y": "vram"}), box("c", {"z": "vram"})], first)
    assert second.slot_of("b") == first.slot_of("b")
    assert second.backend_of("y") == first.backend_of("y")
    assert second.slot_of("c") == first.slot_of("a")  # the freed slot is reused
    assert second.backend_of("z") == first.backend_of("x")
    assert second.shape() == first.shape()  # no reload needed


def test_more_boxes_than_slots_grows_the_shape() -> None:
    many = [box(f"box{i:02d}", {"m": "vram"}, port=9000 + i) for i in range(11)]
    plan = plan_routes(many, RoutePlan())
    assert len(plan.slots) == 16 and plan.shape() != RoutePlan().shape()
    assert plan.members["m"] == {b.box_id for b in many}


def test_a_drained_box_leaves_every_model_but_keeps_its_slot_in_drain() -> None:
    boxes = [box("a", {"m": "vram", "n": "disk"}, free_gb=90), box("b", {"m": "vram", "n": "disk"})]
    plan = plan_routes(boxes, RoutePlan(), drained=frozenset({"a"}))
    assert plan.members == {"m": frozenset({"b"}), "n": frozenset({"b"})}
    assert plan.slots[plan.slot_of("a") or 0].admin == "drain"  # type: ignore[union-attr]
    assert plan.fallback == "b"


def test_the_plan_survives_its_json_round_trip() -> None:
    plan = plan_routes([box("a", {"m": "vram"}), box("b", {"n": "host"})], RoutePlan())
    assert plan_from_doc(plan_doc(plan)) == plan
    with pytest.raises(ValueError, match="not a routing plan"):
        plan_from_doc({"slots": 3})


def test_a_box_haproxy_finds_down_serves_nothing_before_its_row_expires() -> None:
    boxes = [box("a", {"m": "disk"}, free_gb=50), box("b", {"m": "disk"}, free_gb=10)]
    plan = plan_routes(boxes, RoutePlan(), down=frozenset({"a"}))
    assert plan.members["m"] == {"b"} and plan.fallback == "b"
    assert plan.slots[plan.slot_of("a") or 0] is not None  # still checked, to come back


def test_a_box_of_an_older_compatible_api_is_routed_and_an_incompatible_one_is_not() -> None:
    old = replace(box("old", {"m": "vram"}), api_version=1)
    new = replace(box("new", {"m": "vram"}), api_version=2)
    future = replace(box("future", {"m": "vram"}), api_version=3)
    plan = plan_routes([old, new, future], RoutePlan(), api_version=2)
    assert plan.members["m"] == {"old", "new"}
    assert plan.slots[plan.slot_of("future") or 0].admin == "maint"  # type: ignore[union-attr]
    assert [compatibility(v, 2) for v in (1, 2, 3, 0)] == ["older, compatible", "current", "incompatible",
                                                           "incompatible"]
