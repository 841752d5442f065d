"""Running a real `appliance serve` process for tests: a config written to a tmp dir, free ports,
status polling with deadlines, and teardown that kills every process the test started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from standins.launch import wait_until

ROOT = Path(__file__).resolve().parent.parent
STANDINS = ROOT / "tests" / "standins"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    """Enough TOML for test configs: scalars at top, then [table] and [table."sub"] sections."""
    out: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict) or k in ("env",)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict) and k not in ("env",)}
        if prefix:
            out.append(f"[{prefix}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for k, v in tables.items():
            emit(f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k), v)

    emit("", doc)
    return "\n".join(out) + "\n"


def vllm_engine(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "vllm",
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "port": port,
        "command": [PY, str(STANDINS / "vllm_standin.py")],
        "gpu_memory_utilization": 0.8,
        "max_model_len": 4096,
        "ready_timeout_s": 30.0,
        "stop_grace_s": 2.0,
        **extra,
    }


def comfyui_engine(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "comfyui",
        "port": port,
        "command": [PY, str(STANDINS / "comfyui_standin.py")],
        "ready_timeout_s": 30.0,
        "stop_grace_s": 2.0,
        **extra,
    }


class Daemon:
    def __init__(self, tmp: Path, doc: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.state = tmp / "state"
        self.fake_gpu = tmp / "fakegpu"
        self.fake_gpu.mkdir(exist_ok=True)
        doc = {**doc}
        doc.setdefault("server", {})
        doc["server"] = {"state_dir": str(self.state), "port": self.port, **doc["server"]}
        doc.setdefault("gpu", {"probe": "fake", "fake_dir": str(self.fake_gpu), "declared_total_gb": 24})
        self.config = tmp / "config.toml"
        self.config.write_text(to_toml(doc))
        self.env = {**os.environ, "APPLIANCE_FAKE_GPU_DIR": str(self.fake_gpu), **(env or {})}
        self.env.pop("APPLIANCE_STATE_DIR", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Daemon:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PY, "-m", "appliance", "serve", "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        wait_for(lambda: self.get("/health") is not None, 20, "daemon /health")
        return self

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def post(self, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def engine(self, name: str) -> dict[str, Any]:
        status = self.get("/api/status")
        assert status is not None, self.log.read_text()[-3000:]
        return next(e for e in status["engines"] if e["name"] == name)

    def wait_engine(
        self, name: str, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def check() -> bool:
            found.update(self.engine(name))
            return pred(found)

        try:
            wait_for(check, timeout, f"{name}: {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (last status {found})") from None
        return found

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    wait_until(pred, deadline_s=timeout, interval_s=interval, message=what)


def group_members(pgid: int) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.add(int(name))
    return found


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_groups(pgids: set[int]) -> None:
    for g in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)
