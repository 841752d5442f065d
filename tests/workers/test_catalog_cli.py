"""`appliance models` and `appliance plan` through typer's CliRunner on a local app."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner
from worker_harness import free_port, start_process, stop_process_group, wait_until

from appliance.catalog_cli import models_command, plan_command, pull_command
from appliance.gpu import detect_probe
from appliance.pull import MANIFEST

DATA = Path(__file__).resolve().parents[1] / "data"


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("models")(models_command)
    app.command("pull")(pull_command)
    app.command("plan")(plan_command)
    return app


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A model store holding the Piper voice as a finished pull."""
    directory = tmp_path / "models" / "piper-en-us-joe-medium"
    directory.mkdir(parents=True)
    (directory / "en_US-joe-medium.onnx").write_bytes(b"o" * 100)
    (directory / "en_US-joe-medium.onnx.json").write_bytes(b"{}")
    files = [{"dest": "en_US-joe-medium.onnx", "size": 100}, {"dest": "en_US-joe-medium.onnx.json", "size": 2}]
    (directory / MANIFEST).write_text(json.dumps({"model_id": "piper-en-us-joe-medium", "files": files}))
    return tmp_path / "models"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[str]:
    status = {"models": [
        {"id": "qwen2.5-32b", "catalog": "qwen2.5-32b-instruct-awq", "tier": "vram"},
        {"id": "sd3.5-large-turbo", "catalog": "sd3.5-large-turbo-comfyui", "tier": "host"},
        {"id": "all-minilm-l6-v2", "tier": "disk"},
    ]}  # fmt: skip
    (tmp_path / "status.json").write_text(json.dumps(status))
    port = free_port()
    script = Path(__file__).with_name("status_standin.py")
    argv = [sys.executable, str(script), "--port", str(port), "--status", str(tmp_path / "status.json"),
            "--api-key", "sekret"]  # fmt: skip
    proc = start_process(argv, tmp_path / "status.log")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/api/status", timeout=1).status_code == 401
        except httpx.TransportError:
            return False

    wait_until(up, 20, "status stand-in")
    yield url
    stop_process_group(proc)


def test_models_shows_disk_state_without_a_daemon(store: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli(), ["models", "--models-dir", str(store), "--daemon-url", closed])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[2:] if line and not line.startswith("(")}
    assert lines["piper-en-us-joe-medium"].endswith("on disk")
    assert lines["qwen2.5-32b-instruct-awq"].endswith("not downloaded")
    assert "CPML (accept)" in lines["xtts-v2"]
    assert f"daemon not reachable at {closed}" in result.output


def test_models_merges_the_daemons_residency(store: Path, daemon: str) -> None:
    args = ["models", "--models-dir", str(store), "--daemon-url", daemon, "--json"]
    result = CliRunner().invoke(cli(), args, env={"APPLIANCE_API_KEY": "sekret"})
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    states = {m["id"]: m["state"] for m in payload["models"]}
    assert payload["daemon"] is True
    assert states["qwen2.5-32b-instruct-awq"] == "in VRAM"
    assert states["sd3.5-large-turbo-comfyui"] == "in host RAM"
    assert states["all-minilm-l6-v2"] == "on disk"
    assert states["piper-en-us-joe-medium"] == "on disk" and states["mochi-1-preview"] == "not downloaded"
    unauthorised = CliRunner().invoke(cli(), args, env={"APPLIANCE_API_KEY": ""})
    assert json.loads(unauthorised.output)["daemon"] is False


def test_models_default_store_follows_the_state_dir(store: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli(), ["models", "--json", "--daemon-url", closed],
                                env={"APPLIANCE_STATE_DIR": str(store.parent)})  # fmt: skip
    states = {m["id"]: m["state"] for m in json.loads(result.output)["models"]}
    assert states["piper-en-us-joe-medium"] == "on disk"


def test_plan_with_the_recorded_3090(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["plan", "--snapshot", str(DATA / "rtx3090_box.json"), "--hourly-price", "0.2"])
    assert result.exit_code == 0, result.output
    assert "Box: NVIDIA GeForce RTX 3090 24.0 GiB; RAM 64.0 GiB; 16 cores" in result.output
    assert "Profile: gpu-24gb" in result.output and "Monthly cost: $146.00" in result.output
    as_json = CliRunner().invoke(cli(), ["plan", "--snapshot", str(DATA / "rtx3090_box.json"), "--json"])
    plan = json.loads(as_json.output)
    assert plan["profile"] == "gpu-24gb" and plan["monthly_cost"] is None
    assert plan["services"][0]["model_id"] == "qwen2.5-32b-instruct-awq"


def test_plan_on_this_machine(tmp_path: Path) -> None:
    probe = detect_probe(0)
    snapshot = probe.snapshot()
    probe.close()
    result = CliRunner().invoke(cli(), ["plan", "--models-dir", str(tmp_path), "--json"],
                                env={"APPLIANCE_HOURLY_PRICE": "0.1"})  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["monthly_cost"] == 73.0 and plan["host"]["cores"] >= 1 and plan["host"]["ram_bytes"] > 1 << 30
    if snapshot.total_bytes == 0:  # no NVIDIA GPU here: the CPU profile
        assert plan["profile"] == "cpu"
        assert {s["service"]: s["model_id"] for s in plan["services"]} == {
            "text": "qwen2.5-0.5b-instruct", "image": "sd-turbo", "speech": "piper-en-us-joe-medium",
            "embedding": "all-minilm-l6-v2", "transcription": "whisper-small",
        }  # fmt: skip
    else:
        assert plan["profile"].startswith("gpu-") and plan["gpu_total_bytes"] == snapshot.total_bytes


def test_plan_rejects_a_bad_snapshot(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = CliRunner().invoke(cli(), ["plan", "--snapshot", str(bad)])
    assert result.exit_code == 2 and "not a recorded box" in result.output


def test_pull_of_an_unknown_model_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli(), ["pull", "qwen-32b"])
    assert result.exit_code == 2 and "unknown model 'qwen-32b'" in result.output


def test_plan_prices_the_box_at_the_configured_hourly_price(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nhourly_price_usd = 0.5\nstate_dir = "{tmp_path / "state"}"\n')
    args = ["plan", "--snapshot", str(DATA / "rtx3090_box.json"), "--json"]
    plan = json.loads(CliRunner().invoke(cli(), args, env={"APPLIANCE_CONFIG": str(config)}).output)
    assert plan["hourly_price"] == 0.5 and plan["monthly_cost"] == 365.0
    flag = json.loads(CliRunner().invoke(cli(), [*args, "--hourly-price", "0.2"],
                                         env={"APPLIANCE_CONFIG": str(config)}).output)
    assert flag["monthly_cost"] == 146.0  # the option wins over the configuration
