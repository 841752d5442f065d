"""The simulator measures the box a user gets: its defaults are the shipped configuration's."""

from __future__ import annotations

from pathlib import Path

from appliance.config import GIB, ModelConfig, load_config, parse_config
from appliance.sim.calibration import Calibration

ROOT = Path(__file__).resolve().parents[2]


def test_the_simulator_plans_with_the_shipped_host_ram_budget_and_reserve() -> None:
    """The simulator used to assume 40 GB of host RAM where the appliance ships 32 GiB: the three
    models' 36 GB of host copies fitted, so no run ever had to drop one (issue 13, item 6)."""
    cal = Calibration()
    for cfg in (parse_config({}), load_config(ROOT / "config.toml")):
        assert cal.host_budget_bytes == int(cfg.gpu.host_ram_budget_gb * GIB)
        assert cal.vram_reserve_bytes == int(cfg.gpu.reserve_gb * GIB)


def test_the_simulator_caps_answers_at_the_shipped_max_tokens_cap() -> None:
    """The simulator capped answers at 2,048 tokens, the appliance at 4,096."""
    cal = Calibration()
    assert cal.llm.max_tokens_cap == ModelConfig(engine="e", modality="text").max_tokens_cap
    shipped = load_config(ROOT / "config.toml")
    text = [m for m in shipped.models.values() if m.modality == "text"]
    assert text and all(m.max_tokens_cap == cal.llm.max_tokens_cap for m in text)
