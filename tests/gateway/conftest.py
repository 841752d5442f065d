"""Fixtures for the gateway tests: a real `appliance serve` process on a free loopback port, configured
with stand-in engines (vLLM, ComfyUI) and the appliance's own workers, with API keys created first.

Teardown stops the daemon (SIGTERM, then SIGKILL of its group) and kills any engine group its pid
file still records, so nothing a test started outlives it. Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from daemon_harness import comfyui_engine, free_port, to_toml, vllm_engine  # noqa: E402
from standins.launch import wait_until as poll  # noqa: E402

from appliance.gateway.keys import KeyStore  # noqa: E402
from appliance.store import open_store  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def wait_until(pred: Callable[[], Any], deadline_s: float, what: str, interval_s: float = 0.05) -> Any:
    return poll(pred, deadline_s=deadline_s, interval_s=interval_s, message=what)


@dataclass
class Http:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Gateway:
    tmp: Path
    port: int
    proc: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)
    # Every client a test makes, closed when the daemon stops: openai 3 (httpx2) warns about a pooled socket
    # that is garbage-collected open, and the suite treats warnings as errors.
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def client(self, key: str | None = "user", **kw: Any) -> openai.OpenAI:
        api_key = self.keys.get(key or "", key or "none")
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0,
                               timeout=kw.pop("timeout", 60.0), **kw)
        self.clients.append(client)
        return client

    def request(self, method: str, path: str, body: Any = None, key: str | None = "user",
                headers: dict[str, str] | None = None, raw: bytes | None = None, timeout: float = 60) -> Http:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            hdrs["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Http(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as exc:
            return Http(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())

    def status(self) -> dict[str, Any]:
        resp = self.request("GET", "/api/status", key="admin")
        assert resp.status == 200, resp.body
        result: dict[str, Any] = resp.json()
        return result

    def engine(self, name: str) -> dict[str, Any]:
        return next(e for e in self.status()["engines"] if e["name"] == name)

    def idle(self) -> bool:
        """No request queued or in flight anywhere (what a rejected request must leave behind)."""
        models = self.status().get("residency", {}).get("models", {})
        return all(m["queued"] == 0 and m["in_flight"] == 0 for m in models.values())

    def usage(self) -> dict[str, Any]:
        resp = self.request("GET", "/api/usage?recent=1000", key="admin")
        assert resp.status == 200, resp.body
        result: dict[str, Any] = resp.json()
        return result

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            leftovers = json.loads((self.state / "run" / "engines.json").read_text())
        except (OSError, ValueError):
            leftovers = {}
        for rec in leftovers.values():
            with contextlib.suppress(ProcessLookupError, PermissionError, KeyError, TypeError):
                os.killpg(int(rec["pgid"]), signal.SIGKILL)


def launch(tmp: Path, doc: dict[str, Any], keys: dict[str, bool] | None = None,
           env: dict[str, str] | None = None, host: str | None = None) -> Gateway:
    """Start `appliance serve` with `doc` as its config; `keys` maps key names to admin scope."""
    port = free_port()
    fake_gpu = tmp / "fakegpu"
    fake_gpu.mkdir(parents=True, exist_ok=True)
    doc = {**doc, "server": {"state_dir": str(tmp / "state"), "port": port, **doc.get("server", {})}}
    doc.setdefault("gpu", {"probe": "fake", "fake_dir": str(fake_gpu), "declared_total_gb": 24})
    (tmp / "config.toml").write_text(to_toml(doc))
    backing = open_store(doc.get("store", {}).get("url", ""), tmp / "state")
    store = KeyStore(backing)
    created = {name: store.create(name, admin=admin)[1] for name, admin in (keys or {}).items()}
    backing.close()
    full_env = {**os.environ, **OFFLINE, "APPLIANCE_FAKE_GPU_DIR": str(fake_gpu), "PYTHONPATH": str(ROOT),
                **(env or {})}
    full_env.pop("APPLIANCE_STATE_DIR", None)
    argv = [sys.executable, "-m", "appliance", "serve", "--config", str(tmp / "config.toml")]
    if host:
        argv += ["--host", host]
    with open(tmp / "daemon.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
                                start_new_session=True)
    gw = Gateway(tmp, port, proc, created)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        return _listening(port) and gw.request("GET", "/health", key=None).status == 200

    try:
        wait_until(ready, 30, "the daemon's /health")
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{gw.log()[-3000:]}")
    except BaseException:
        gw.stop()
        raise
    return gw


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def worker_engine(worker: str, model_path: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "worker", "worker": worker, "model_path": model_path, "device": "cpu", "port": free_port(),
            "ready_timeout_s": 60.0, "stop_grace_s": 2.0, "env": OFFLINE, **extra}


def full_config(**server: Any) -> dict[str, Any]:
    """Every modality: vLLM and ComfyUI stand-ins, the embed and speech workers."""
    return {
        "server": {"keepalive_interval_s": 0.2, **server},
        "engines": {
            "vllm": vllm_engine(free_port(), gpu_memory_utilization=0.3, sleep_mode=True),
            "comfyui": comfyui_engine(free_port(), env={"COMFYUI_STANDIN_FAIL_TEXT": "EXPLODE",
                                                        "COMFYUI_STANDIN_IMAGE_S": "0.05"}),
            "embed": worker_engine("embed", "all-MiniLM-L6-v2"),
            "tts": worker_engine("speech", "espeak:en-us"),
        },
        "models": {
            "qwen-test": {"engine": "vllm", "modality": "text", "vram_gb": 7.5, "max_tokens_cap": 64},
            "sd-turbo": {"engine": "comfyui", "modality": "image", "vram_gb": 10.0, "workflow": "sd35_turbo",
                         "checkpoint": "sd3.5_large_turbo.safetensors"},
            "sd-plain": {"engine": "comfyui", "modality": "image", "vram_gb": 10.0, "workflow": "checkpoint",
                         "checkpoint": "model.safetensors"},
            "sd-broken": {"engine": "comfyui", "modality": "image", "vram_gb": 10.0, "workflow": "checkpoint",
                          "checkpoint": "missing.safetensors"},
            "minilm": {"engine": "embed", "modality": "embedding", "vram_gb": 0.2},
            "voice": {"engine": "tts", "modality": "speech", "vram_gb": 0.1, "voices": {"nova": "de"}},
        },
    }


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def gateway(module_tmp: Path) -> Iterator[Gateway]:
    """The daemon with every modality configured and two keys: "user" and "admin"."""
    gw = launch(module_tmp, full_config(), keys={"user": False, "admin": True})
    try:
        yield gw
    finally:
        gw.stop()
