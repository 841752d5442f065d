"""`appliance calibration`: the benchmark's calibration from what a running box measured.

Unit tests of the pure mapping (appliance.calibrate), and one end to end: a real daemon with the
vLLM and ComfyUI stand-ins and the speech worker on a 24 GiB fake GPU serves chats, images and
speech; the CLI then writes a TOML that the simulator's own loader reads, with the footprints,
transition times and service times the daemon measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import free_port, vllm_engine
from gateway.conftest import OFFLINE, launch, wait_until, worker_engine
from gateway.preemption_box import GIB, image_box

from appliance.calibrate import measure, pick_roles, render_toml
from appliance.sim.calibration import Calibration, load_calibration

ROOT = Path(__file__).resolve().parent.parent


def status_doc(**llm_view: Any) -> dict[str, Any]:
    view = {"footprint_bytes": 20 * GIB, "measured": True, "host_bytes": 18 * GIB,
            "transitions_s": {"wake": 1.0, "release": 0.2, "start": 80.0}, **llm_view}
    return {
        "gpu": {"total_bytes": 24 * GIB, "name": "Fake"},
        "models": [{"id": "chat", "modality": "text"}, {"id": "small", "modality": "text"},
                   {"id": "img", "modality": "image"}, {"id": "voice", "modality": "speech"}],
        "residency": {"vram_budget_bytes": int(22.5 * GIB), "host_budget_bytes": 48 * GIB,
                      "models": {"chat": view, "small": {"footprint_bytes": GIB, "measured": False},
                                 "img": {"footprint_bytes": 15 * GIB, "measured": False, "host_bytes": 15 * GIB,
                                         "transitions_s": {"load": 4.0}},
                                 "voice": {"footprint_bytes": 3 * GIB, "measured": True}}},
    }


RECORDS = [
    {"model": "chat", "status": 200, "tokens_out": 100, "gpu_s": 4.0, "tokens_exact": True},
    {"model": "chat", "status": 200, "tokens_out": 60, "gpu_s": 2.0, "tokens_exact": True},
    {"model": "chat", "status": 200, "tokens_out": 5, "gpu_s": 1.0, "tokens_exact": True},  # too short to count
    {"model": "chat", "status": 500, "tokens_out": 90, "gpu_s": 9.0},  # failed: not a service time
    {"model": "small", "status": 200, "tokens_out": 40, "gpu_s": 1.0},
    {"model": "img", "status": 200, "images": 2, "gpu_s": 12.0},
    {"model": "voice", "status": 200, "audio_s": 10.0, "gpu_s": 4.0},
    {"model": "voice", "status": 200, "audio_s": 0.0, "gpu_s": 3.0},  # length unknown: not counted
]


def test_roles_go_to_the_busiest_model_of_each_kind_unless_chosen() -> None:
    assert pick_roles(status_doc(), RECORDS, {}) == {"llm": "chat", "image": "img", "speech": "voice"}
    assert pick_roles(status_doc(), RECORDS, {"llm": "small"})["llm"] == "small"
    with pytest.raises(ValueError, match="--speech nope: not a model the GPU scheduler serves"):
        pick_roles(status_doc(), RECORDS, {"speech": "nope"})


def test_what_was_measured_reaches_the_simulators_loader_and_the_rest_is_named(tmp_path: Path) -> None:
    m = measure(status_doc(), RECORDS, {"llm": "chat", "image": "img", "speech": "voice"})
    path = tmp_path / "box.toml"
    path.write_text(render_toml(m, ["a test box"]))
    cal = load_calibration(path)
    base = Calibration()
    assert (cal.vram_total_bytes, cal.vram_reserve_bytes) == (24 * GIB, int(1.5 * GIB))
    assert cal.host_budget_bytes == 48 * GIB  # the box's own host-RAM budget, not the simulator's default
    llm = cal.model("llm")
    assert (llm.vram_bytes, llm.size_bytes) == (20 * GIB, 18 * GIB)
    assert llm.wake_fixed_s == pytest.approx(1.0 - 18 * GIB / base.host_bandwidth, abs=1e-4)
    assert (llm.release_s, llm.cold_start_s) == (0.2, 80.0)
    assert cal.model("image").load_fixed_s == pytest.approx(4.0 - 15 * GIB / base.disk_bandwidth, abs=1e-4)
    assert cal.model("image").vram_bytes == base.model("image").vram_bytes  # not measured: default kept
    assert cal.llm.decode_tps == 27.5  # median of 25 and 30 tokens/s; the short and the failed left out
    assert cal.image.seconds == 6.0
    assert cal.speech.real_time_factor == 0.4 and cal.model("speech").vram_bytes == 3 * GIB
    text = path.read_text()
    assert "image (img): footprint not measured yet" in text and "speech (voice): no wake measured" in text


def test_an_unmeasured_box_changes_nothing(tmp_path: Path) -> None:
    m = measure({"gpu": {"total_bytes": 0}, "residency": {"vram_budget_bytes": 0, "models": {}}}, [], {})
    path = tmp_path / "none.toml"
    path.write_text(render_toml(m, ["nothing measured"]))
    assert load_calibration(path) == Calibration()
    assert "the card (no GPU measured)" in path.read_text() and "speech: no model of that kind" in path.read_text()


def test_the_cli_writes_a_calibration_from_a_running_daemon(tmp_path: Path) -> None:
    vllm = vllm_engine(free_port(), sleep_mode=True,
                       env={"VLLM_STANDIN_FOOTPRINT_BYTES": str(12 * GIB), "VLLM_STANDIN_TOKENS_PER_S": "50"})
    # device "auto" on the fake GPU: scheduled as a GPU model, synthesising on the CPU
    tts = worker_engine("speech", "espeak:en-us", device="auto", env={**OFFLINE, "APPLIANCE_FAKE_GPU_BYTES": str(GIB)})
    models = {"chat": {"engine": "vllm", "modality": "text", "vram_gb": 12, "max_tokens_cap": 256},
              "voice": {"engine": "tts", "modality": "speech", "vram_gb": 1}}
    doc = image_box(tmp_path, {"vllm": vllm, "tts": tts}, models, max_wait_s=1.0, image_s=0.5)
    gw = launch(tmp_path, doc)
    try:
        client = gw.client(None)
        for _ in range(2):
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a b c"}],
                                           max_tokens=40)
            client.images.generate(model="img", prompt="a cat", size="256x256", response_format="b64_json")
        client.audio.speech.create(model="voice", voice="alloy", input="Hello there, this is a test.",
                                   response_format="wav")
        wait_until(lambda: all(m["measured"] for m in gw.status()["residency"]["models"].values()), 20,
                   "every footprint to be measured")
        out = tmp_path / "box.toml"
        env = {**os.environ, "APPLIANCE_URL": gw.url}
        run = subprocess.run([sys.executable, "-m", "appliance", "calibration", "-o", str(out)], capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=60)
        assert run.returncode == 0, run.stderr
        assert f"wrote {out}" in run.stdout
    finally:
        gw.stop()
    cal = load_calibration(out)
    raw = tomllib.loads(out.read_text())
    # vLLM was started, slept for the image and woken again; ComfyUI loads inside its first job, so
    # only its release is timed (its start and wake keep the simulator's figures).
    assert {"vram_bytes", "size_bytes", "cold_start_s", "release_s", "wake_fixed_s"} <= set(raw["models"]["llm"])
    assert {"vram_bytes", "size_bytes", "release_s"} == set(raw["models"]["image"])
    assert (cal.vram_total_bytes, cal.vram_reserve_bytes) == (24 * GIB, int(1.5 * GIB))
    assert cal.host_budget_bytes == 64 * GIB  # image_box's gpu.host_ram_budget_gb
    assert cal.model("llm").vram_bytes == 12 * GIB and cal.model("image").vram_bytes == 15 * GIB
    assert cal.model("speech").vram_bytes == GIB
    llm = cal.model("llm")
    assert 0 < llm.cold_start_s < 60 and 0 < llm.release_s < 10 and llm.wake_fixed_s >= 0
    assert 0 < cal.model("image").release_s < 10
    assert 30 < cal.llm.decode_tps <= 60  # the stand-in streams 50 tokens/s, plus request overhead
    assert 0.4 < cal.image.seconds < 5  # the stand-in takes 0.5 s an image
    assert cal.speech.real_time_factor > 0
    assert "Roles: llm = chat, image = img, speech = voice." in out.read_text()
