"""The fleet's residency summary and the Appliance's readiness, read in-process from an Appliance
built on a fake GPU (no engine is started: the summary must not need one)."""

from __future__ import annotations

import json
from pathlib import Path

from daemon_harness import comfyui_engine, free_port, vllm_engine

from appliance.app import Appliance
from appliance.config import parse_config
from appliance.fleet import API_VERSION
from appliance.fleet.summary import residency_summary
from appliance.scheduler.state import Phase
from appliance.scheduler.types import Tier

GIB = 1 << 30


def build(tmp: Path) -> Appliance:
    fake = tmp / "fakegpu"
    fake.mkdir()
    doc = {
        "server": {"state_dir": str(tmp / "state")},
        "gpu": {"probe": "fake", "fake_dir": str(fake), "declared_total_gb": 24},
        "jobs": {"box_id": "box-a"},
        "engines": {"vllm": vllm_engine(free_port()), "comfyui": comfyui_engine(free_port())},
        "models": {
            "qwen": {"engine": "vllm", "modality": "text", "vram_gb": 20.0},
            "sd": {"engine": "comfyui", "modality": "image", "vram_gb": 10.0, "workflow": "checkpoint",
                   "checkpoint": "model.safetensors"},
            "huge": {"engine": "comfyui", "modality": "image", "vram_gb": 30.0, "workflow": "checkpoint",
                     "checkpoint": "model.safetensors"},
        },
    }
    return Appliance(parse_config(doc, source="test"), host="127.0.0.1", port=free_port())


async def test_summary_shape_tiers_and_readiness(tmp_path: Path) -> None:
    app = build(tmp_path)
    try:
        s = residency_summary(app)
        json.dumps(s)  # the registry row and /v1/residency carry it as JSON
        assert s["box_id"] == "box-a" and s["state"] == "starting"
        assert s["total_vram_bytes"] == 24 * GIB and 0 < s["free_vram_bytes"] <= 24 * GIB
        assert set(s["models"]) == {"qwen", "sd", "huge"}
        qwen = s["models"]["qwen"]
        assert qwen == {"tier": "disk", "engine": "vllm", "resident": False, "loadable": True,
                        "queue": 0, "in_flight": 0}
        assert s["models"]["huge"]["loadable"] is False  # 30 GB never fits a 24 GiB budget
        app.mark_serving()
        assert app.readiness == "ready" and app.accepting and residency_summary(app)["state"] == "ready"
        assert app.drain() is True and app.drain() is False
        assert app.readiness == "draining" and not app.accepting
        app.mark_serving()  # a drain is not undone by a late start-up
        assert residency_summary(app)["state"] == "draining"
        assert API_VERSION == 1
    finally:
        await app.shutdown()


async def test_generation_bumps_on_a_residency_change_only(tmp_path: Path) -> None:
    app = build(tmp_path)
    try:
        mgr = app.residency
        first = residency_summary(app)["generation"]
        mgr._note_residency()  # nothing changed
        assert residency_summary(app)["generation"] == first
        slot = mgr.core.ledger.slots["qwen"]
        slot.phase = Phase.ACTIVATING  # what the core does when it starts a load
        mgr._note_residency()
        assert residency_summary(app)["generation"] == first + 1
        slot.became_ready(0.0)
        mgr._note_residency()
        s = residency_summary(app)
        assert s["generation"] == first + 2
        assert s["models"]["qwen"]["tier"] == Tier.VRAM.value and s["models"]["qwen"]["resident"] is True
    finally:
        await app.shutdown()
