"""The daemon speaks systemd's notification protocol to a real datagram socket (NOTIFY_SOCKET): READY=1 once
it listens, STATUS= with its engines' states, WATCHDOG=1 only while its own /health answers, STOPPING=1 at
shutdown. The unit relies on it (Type=notify, WatchdogSec): without READY systemd kills the start, without
WATCHDOG it kills a healthy daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from daemon_harness import ROOT, free_port

from appliance.systemd_notify import answers_health, engines_line, notify_loop, watchdog_interval_s


def _collect(sock: socket.socket, until: str, limit: int = 200) -> list[str]:
    got: list[str] = []
    for _ in range(limit):  # bounded: each recv waits at most the socket timeout
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(until in m for m in got):
            break
    return got


def test_ready_status_watchdog_stopping_reach_the_socket(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nport = {port}\nstate_dir = "{tmp_path / "state"}"\n[gpu]\nprobe = "declared"\n'
                      '[engines.tts]\nkind = "worker"\nworker = "speech"\nmodel_path = "espeak"\nport = '
                      f'{free_port()}\n[models.tts]\nengine = "tts"\nmodality = "speech"\n')
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    env.pop("APPLIANCE_STATE_DIR", None)
    log = tmp_path / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        before = _collect(sock, "WATCHDOG=1")
        assert before[0] == "STATUS=starting", before
        ready = next(i for i, m in enumerate(before) if "READY=1" in m)
        assert any(m == "STATUS=serving; engines: tts stopped" for m in before[ready:]), before
        assert before[-1] == "WATCHDOG=1"  # sent only after /health answered over the daemon's own socket
        proc.send_signal(signal.SIGTERM)
        after = _collect(sock, "STOPPING=1")
        assert "STOPPING=1" in after, after
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        sock.close()
    assert f"configuration: {config}" in log.read_text()


def test_the_router_says_ready_pets_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    """install.sh --router runs `appliance router` under the same Type=notify unit with WatchdogSec."""
    from fleet.router_harness import Router

    router = Router(tmp_path, "postgresql://a@127.0.0.1:1/none?connect_timeout=1")
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    env.pop("APPLIANCE_STATE_DIR", None)
    with router.log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "router", "--config", str(router.config)],
                                env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    router.proc = proc
    try:
        got = _collect(sock, "WATCHDOG=1")
        assert any(m.startswith("READY=1") for m in got), got
        assert "STATUS=serving; engines: haproxy running" in got and got[-1] == "WATCHDOG=1", got
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in _collect(sock, "STOPPING=1")
        assert proc.wait(60) == 0
    finally:
        router.stop()
        sock.close()


def test_no_watchdog_without_health(tmp_path: Path) -> None:
    """A daemon whose /health does not answer is not petted: systemd's watchdog then restarts it."""
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    closed = free_port()

    async def run() -> None:
        task = asyncio.ensure_future(notify_loop(lambda: [{"name": "vllm", "state": "starting"}],
                                                 lambda: answers_health("127.0.0.1", closed, False), env))
        got = await asyncio.to_thread(_collect, sock, "never", 4)
        task.cancel()
        assert got and got[0] == "STATUS=serving; engines: vllm starting"
        assert "WATCHDOG=1" not in got

    asyncio.run(run())
    sock.close()


def test_watchdog_interval_is_half_the_period_and_only_for_this_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None
    assert engines_line([]) == "serving; no engines configured"
