"""Downloads requested through the daemon's API: progress arrives as server-sent events, the files
land verified in the model store, and a licence that needs acceptance is refused before anything
starts. The hub is a local stand-in of the Hugging Face file routes (HF_ENDPOINT points at it)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import ROOT, Daemon, free_port, wait_for

COMMIT = "0123456789abcdef0123456789abcdef01234567"
BLOB = b"".join(i.to_bytes(4, "big") * 16 for i in range(40_000))  # 2.5 MB
CATALOG = """
[models.tiny]
name = "Tiny test model"
modality = "text"
engine = "worker:text"
devices = ["cpu"]
disk_gb = 0.003
vram_gib = 0.0
ram_gib = 0.01
licence = "apache-2.0"
[[models.tiny.files]]
repo = "test-org/tiny-model"
include = ["*.json", "*.safetensors"]

[models.restricted]
name = "Needs a licence"
modality = "speech"
engine = "worker:speech"
devices = ["cpu"]
disk_gb = 0.001
vram_gib = 0.0
ram_gib = 0.01
licence = "TestLicence"
licence_acceptance = true
[[models.restricted.files]]
repo = "test-org/tiny-model"
path = "config.json"
"""


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[str]:
    src = tmp_path / "hub"
    src.mkdir()
    (src / "model.safetensors").write_bytes(BLOB)
    (src / "config.json").write_text(json.dumps({"hidden_size": 32}))
    config = {"repos": {"test-org/tiny-model": {"commit": COMMIT, "files": {
        "model.safetensors": {"source": str(src / "model.safetensors"), "lfs": True},
        "config.json": {"source": str(src / "config.json"), "lfs": False}}}},
        "drop_after": {}, "corrupt": []}
    (tmp_path / "hub.json").write_text(json.dumps(config))
    port, cdn = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "workers" / "hf_standin.py"), "--config",
                             str(tmp_path / "hub.json"), "--port", str(port), "--cdn-port", str(cdn)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/_requests", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(up, 20, "the hub stand-in")
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def read_events(url: str, until: str, subject: str, limit_s: float = 60) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(url, timeout=limit_s) as stream:
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["kind"] == until and events[-1]["subject"] == subject:
                    return events
    raise AssertionError(f"the stream ended before {until}: {events[-5:]}")


def test_pull_through_the_api_streams_progress_and_verifies_files(tmp_path: Path, hub: str) -> None:
    (tmp_path / "catalog.toml").write_text(CATALOG)
    d = Daemon(tmp_path, {"server": {"catalog_file": str(tmp_path / "catalog.toml")},
                          "gpu": {"probe": "declared"}}, env={"HF_ENDPOINT": hub})
    try:
        d.start()
        status, body = d.post("/api/models/restricted/pull")
        assert status == 403 and body["error"]["code"] == "licence_not_accepted"
        status, body = d.post("/api/models/nope/pull")
        assert status == 404 and body["error"]["param"] == "model_id"
        status, body = d.post("/api/models/tiny/pull")
        assert status == 202 and body["state"] == "running"
        events = read_events(d.url + "/api/events?history=500", "download.done", "tiny")
        kinds = [e["kind"] for e in events if e["subject"] == "tiny"]
        assert kinds[0] == "download.resolving" and kinds[-1] == "download.done"
        progress = [e["data"]["done_bytes"] for e in events if e["kind"] == "download.progress"]
        assert progress and progress == sorted(progress)  # monotonic
        store = d.state / "models" / "tiny"
        assert (store / "model.safetensors").read_bytes() == BLOB
        assert json.loads((store / "config.json").read_text()) == {"hidden_size": 32}
        wait_for(lambda: d.get("/api/downloads")["downloads"][0]["state"] == "done", 10, "the job to finish")
        status, body = d.post("/api/models/restricted/pull?accept_licence=true")
        assert status == 202
        read_events(d.url + "/api/events?history=500", "download.done", "restricted")
        assert (d.state / "models" / "restricted" / "config.json").is_file()
    finally:
        d.stop()
