"""Helpers for the worker tests: real processes on free loopback ports, started and stopped in stages.

Owns free-port allocation, starting `python -m services.<kind>` (or any script) in its own process group
with the repository on PYTHONPATH and downloads switched off, waiting for /health by polling with a
deadline (never a fixed sleep), and stopping a process group (SIGTERM, a grace period, then SIGKILL).
A module of its own (not conftest) so test modules import it by a name no other conftest can shadow.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from standins.launch import wait_until as poll

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, deadline_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll `predicate` until it returns true or the deadline passes (never a fixed sleep)."""
    poll(predicate, deadline_s=deadline_s, interval_s=interval_s, message=what)


@dataclass
class ServedProcess:
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process_group(self.proc)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
    else:  # the leader is gone; make sure nothing it started survives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def start_process(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )


def start_worker(
    kind: str,
    model_id: str,
    model_path: str | Path,
    log_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    deadline_s: float = 60.0,
    python: str | None = None,
) -> ServedProcess:
    """`python`: the interpreter to run the worker with (default: this one)."""
    port = free_port()
    argv = [
        python or sys.executable, "-m", f"services.{kind}", "--host", "127.0.0.1", "--port", str(port),
        "--model-id", model_id, "--model-path", str(model_path), "--device", "cpu", *extra,
    ]  # fmt: skip
    log_path = log_dir / f"{kind}-{model_id}-{port}.log"
    proc = start_process(argv, log_path, env)
    served = ServedProcess(f"http://127.0.0.1:{port}", proc, log_path)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{served.log()}")
        try:
            return httpx.get(served.base_url + "/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, deadline_s, f"{kind} worker /health")
    except BaseException:
        served.stop()
        raise
    return served


def worker_stats(worker: ServedProcess) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(worker.base_url + "/stats", timeout=30).json()  # a busy CPU box is slow
    return stats


def send_raw(worker: ServedProcess, path: str, body: dict[str, Any], request_id: str) -> socket.socket:
    """POST `body` on a raw connection and leave the answer unread (the caller hangs up by closing it)."""
    data = json.dumps(body).encode()
    port = int(worker.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: {request_id}\r\nContent-Length: {len(data)}\r\n\r\n")
    sock.sendall(head.encode() + data)
    return sock


def abandon(worker: ServedProcess, path: str, body: dict[str, Any], request_id: str,
            after_steps: int = 2) -> dict[str, Any]:
    """Start a request, hang up once the worker has done `after_steps` units of its work, wait until the
    worker is idle again; return its /stats then. Asserts the request was still running when dropped."""
    before = worker_stats(worker)["steps"]
    sock = send_raw(worker, path, body, request_id)
    try:
        wait_until(lambda: worker_stats(worker)["steps"] - before >= after_steps, 60, "the job's first steps")
        running = worker_stats(worker)
        assert running["busy"] and running["in_flight"] == 1, running
    finally:
        sock.close()
    wait_until(lambda: not worker_stats(worker)["busy"] and worker_stats(worker)["in_flight"] == 0, 60,
               "the worker idle again after the client hung up")
    return worker_stats(worker)
