"""`appliance plan --write`: on the recorded RTX 3090 box the seed's allocation (Qwen 32B AWQ on vLLM sized
by the plan, SD3.5 Large Turbo on ComfyUI, speech, embeddings); on this machine (no GPU) a configuration
under which every modality answers once its weights are there (the tiny models stand in for the pulled
weights); an existing configuration is never overwritten."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import httpx
from daemon_harness import ROOT, Daemon, free_port

from appliance.catalog import load_catalog
from appliance.config import parse_config
from appliance.plan import load_snapshot, make_plan
from appliance.plan_write import Installation, render_config, speech_fallback

SNAPSHOT = ROOT / "tests" / "data" / "rtx3090_box.json"


def written(where: Installation) -> dict[str, Any]:
    gpu, host = load_snapshot(SNAPSHOT)
    catalog = speech_fallback(load_catalog(), where)
    plan = make_plan(gpu, host.ram_bytes, host.cores, host.disk_free_bytes, catalog, None)
    text = render_config(plan, catalog, where)
    parse_config(tomllib.loads(text), "written")  # valid as the daemon reads it
    return tomllib.loads(text)


def test_the_recorded_3090_gets_the_seeds_allocation() -> None:
    doc = written(Installation(port=8081, vllm="/opt/appliance/engines/vllm/venv/bin/vllm"))
    seed = tomllib.loads((ROOT / "config.toml").read_text())
    assert {m["catalog"] for m in doc["models"].values()} == {m["catalog"] for m in seed["models"].values()}
    vllm = doc["engines"]["vllm"]
    assert vllm["model"] == seed["engines"]["vllm"]["model"] and vllm["quantization"] == "awq_marlin"
    assert vllm["gpu_memory_utilization"] == 0.92 and vllm["command"] == ["/opt/appliance/engines/vllm/venv/bin/vllm"]
    image = doc["models"]["sd3.5-large-turbo-comfyui"]
    assert (image["engine"], image["checkpoint"]) == ("comfyui", "sd3.5_large_turbo.safetensors")
    assert doc["server"]["port"] == 8081 and doc["gpu"]["host_ram_budget_gb"] == 32


def test_xtts_only_where_its_environment_is_installed() -> None:
    doc = written(Installation(xtts_python="/opt/x/bin/python", accepted=("CPML",)))
    assert doc["engines"]["tts"]["python"] == "/opt/x/bin/python" and "xtts-v2" in doc["models"]
    assert doc["licences"]["accepted"] == ["CPML"]


def test_open_webui_only_when_installed() -> None:
    assert "openwebui" not in written(Installation())["engines"]
    webui = written(Installation(openwebui="/opt/w/bin/open-webui"))["engines"]["openwebui"]
    assert webui == {"kind": "openwebui", "port": 3000, "command": ["/opt/w/bin/open-webui"]}


def test_tls_and_plain_http_settings_are_written() -> None:
    doc = written(Installation(host="0.0.0.0", tls_cert="/e/cert.pem", tls_key="/e/key.pem"))
    assert (doc["server"]["tls_cert"], doc["server"]["tls_key"]) == ("/e/cert.pem", "/e/key.pem")
    assert written(Installation(host="0.0.0.0", plain_http=True))["server"]["plain_http"] is True


def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.status, r.read()


def test_on_this_machine_every_modality_answers(tmp_path: Path, tiny_llama_dir: Path, tiny_sd1_dir: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "written.toml"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("APPLIANCE_STATE_DIR", None)
    cmd = [sys.executable, "-m", "appliance", "plan", "--write", str(config), "--state-dir", str(state)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert again.returncode == 1 and "exists (pass --force" in again.stderr  # never overwrites an edited file
    doc = tomllib.loads(config.read_text())
    if doc["engines"].get("vllm"):  # a GPU box runs this suite: the CPU allocation is checked elsewhere
        return
    by_modality = {m["modality"]: mid for mid, m in doc["models"].items()}
    assert set(by_modality) == {"text", "image", "speech", "embedding", "transcription"}
    # the pulled weights, as `appliance pull` lays them out, are the tiny models here
    (state / "models").mkdir(parents=True)
    (state / "models" / by_modality["text"]).symlink_to(tiny_llama_dir)
    (state / "models" / by_modality["image"]).symlink_to(tiny_sd1_dir)
    for eng in doc["engines"].values():
        eng["port"] = free_port()
    d = Daemon(tmp_path, {k: v for k, v in doc.items() if k != "server"})
    d.start()
    try:
        status, body = _post(d.url + "/v1/chat/completions", {"model": by_modality["text"], "max_tokens": 4,
                                                               "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and json.loads(body)["choices"][0]["message"]["role"] == "assistant"
        # the CPU default size plan --write chose (512x512) takes minutes with this tiny model on 2 shared cores;
        # a small explicit size proves the modality answers
        assert doc["engines"]["image"]["extra_args"][-2:] == ["--default-size", "512x512"]
        status, body = _post(d.url + "/v1/images/generations", {"model": by_modality["image"], "prompt": "a fox",
                                                                 "size": "64x64", "response_format": "b64_json"})
        png = base64.b64decode(json.loads(body)["data"][0]["b64_json"])
        assert status == 200 and png[:4] == b"\x89PNG" and int.from_bytes(png[16:20], "big") == 64
        status, body = _post(d.url + "/v1/audio/speech", {"model": by_modality["speech"], "input": "hello",
                                                           "voice": "alloy", "response_format": "wav"})
        assert status == 200 and body[:4] == b"RIFF"
        status, body = _post(d.url + "/v1/embeddings", {"model": by_modality["embedding"], "input": "hello"})
        assert status == 200 and len(json.loads(body)["data"][0]["embedding"]) == 384
        # the Whisper the plan chose is not pulled: its worker answers with pocketsphinx's packaged model
        said = "The quick brown fox jumps over the lazy dog."
        _, wav = _post(d.url + "/v1/audio/speech", {"model": by_modality["speech"], "input": said, "voice": "alloy",
                                                     "response_format": "wav"})  # fmt: skip
        heard = httpx.post(d.url + "/v1/audio/transcriptions", data={"model": by_modality["transcription"]},
                           files={"file": ("fox.wav", wav)}, timeout=300)  # fmt: skip
        assert heard.status_code == 200 and "brown fox" in heard.json()["text"], heard.text
    finally:
        d.stop()
