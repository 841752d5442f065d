"""The daemon's own life: READY=1 to systemd once the port listens, `appliance status` as a table,
an orderly SIGTERM shutdown that stops every engine, and the no-GPU note."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import ROOT, Daemon, alive, free_port, group_members, vllm_engine


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    yield sock, path
    sock.close()


def _next(sock: socket.socket, prefix: str, limit: int = 50) -> str:
    """The first datagram starting with `prefix` (bounded: at most `limit` messages, each within the timeout)."""
    for _ in range(limit):
        message = sock.recv(1024).decode()
        if message.startswith(prefix):
            return message
    return ""


def test_ready_is_notified_once_listening_and_sigterm_stops_engines(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    d = Daemon(tmp_path, {"engines": {"vllm": vllm_engine(free_port(), autostart=True)}},
               env={"NOTIFY_SOCKET": path})
    try:
        d.start()
        message = _next(sock, "READY=1")  # STATUS= lines come before and after it (test_systemd_notify.py)
        assert message.startswith("READY=1")
        assert d.get("/health") == {"status": "ok"}  # it was listening when it said so
        ready = d.wait_engine("vllm", lambda e: e["state"] == "ready", 20, "ready")
        members = group_members(ready["pid"])
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(30) == 0
        assert "STOPPING=1" in _next(sock, "STOPPING=1")
        assert not any(alive(p) for p in members)
        log = d.log.read_text()
        assert "engine vllm: ready -> stopping" in log and "stopping -> stopped" in log
    finally:
        d.kill()


def test_status_command_prints_engines_and_the_no_gpu_note(tmp_path: Path) -> None:
    d = Daemon(tmp_path, {"gpu": {"probe": "declared", "declared_total_gb": 24},
                          "engines": {"vllm": vllm_engine(free_port())}})
    try:
        d.start()
        env = {**os.environ, "APPLIANCE_URL": d.url, "COLUMNS": "200"}
        out = subprocess.run([sys.executable, "-m", "appliance", "status"], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "vllm" in out.stdout and "stopped" in out.stdout
        assert "GPU (declared)" in out.stdout and "declared budget of 24.0 GiB" in out.stdout
        status = d.get("/api/status")
        assert status["gpu"]["kind"] == "declared" and "note" in status["gpu"]
    finally:
        d.stop()


def test_status_command_explains_an_unreachable_daemon() -> None:
    env = {**os.environ, "APPLIANCE_URL": f"http://127.0.0.1:{free_port()}"}
    out = subprocess.run([sys.executable, "-m", "appliance", "status"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=30)
    assert out.returncode == 1 and "cannot reach the daemon" in out.stderr


def test_engine_control_routes(tmp_path: Path) -> None:
    d = Daemon(tmp_path, {"engines": {"vllm": vllm_engine(free_port())}})
    try:
        d.start()
        status, body = d.post("/api/engines/vllm/start")
        assert status == 200 and body["state"] in ("starting", "ready")
        d.wait_engine("vllm", lambda e: e["state"] == "ready", 20, "ready")
        first = d.engine("vllm")["pid"]
        status, body = d.post("/api/engines/vllm/restart")
        assert status == 200 and not alive(first)
        d.wait_engine("vllm", lambda e: e["state"] == "ready" and e["pid"] != first, 20, "ready again")
        status, body = d.post("/api/engines/nope/start")
        assert status == 404 and body["error"]["param"] == "name"
        status, body = d.post("/api/engines/vllm/explode")
        assert status == 404 and "unknown action" in body["error"]["message"]
        lines = d.get("/api/engines/vllm/logs?tail=5")["lines"]
        assert 0 < len(lines) <= 5
    finally:
        d.stop()
