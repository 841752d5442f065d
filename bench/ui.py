"""Web UI load: 25 dashboards held open for a minute against a real daemon, on loopback.

    python bench/ui.py [--clients 25] [--seconds 60] [--quick]

Starts `appliance serve` (auth on: an admin key is created and sent, as the web UI sends it) with a
vLLM stand-in in sleep mode. Each simulated dashboard does what the page does: it holds
`GET /api/events?history=200` open and re-reads `GET /api/status` every two seconds. A driver makes
the dashboards' content change all the time: it loads and releases the model in turn
(`POST /api/models/NAME/load|release`), so residency actions, swaps and engine states flow.

Measures: how many event streams stayed connected to the end (`event_clients`), the lag from an
event's publication (its `at`) to its arrival at each client (`event_lag_p99_ms`, p50 too), the
status reads that failed, and the daemon's own CPU (`daemon_cpu_cores`: CPU seconds of the daemon
process, without its engines, over the wall time). Ends with one JSON line. Bounded in clients and
time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "standins" / "vllm_standin.py"
MODEL = "ui-bench"
STATUS_EVERY_S = 2.0
MAX_CLIENTS = 200
MAX_SECONDS = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, port: int, engine_port: int) -> Path:
    py, standin = json.dumps(sys.executable), json.dumps(str(STANDIN))
    text = f"""
[server]
state_dir = {json.dumps(str(tmp / "state"))}
port = {port}
log_level = "warning"

[gpu]
probe = "declared"
declared_total_gb = 24

[engines.llm]
kind = "vllm"
model = "bench/ui"
port = {engine_port}
command = [{py}, {standin}]
gpu_memory_utilization = 0.3
max_model_len = 4096
sleep_mode = true
ready_timeout_s = 60

[models.{json.dumps(MODEL)}]
engine = "llm"
modality = "text"
vram_gb = 7.0
"""
    path = tmp / "config.toml"
    path.write_text(text)
    return path


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Dashboards:
    """The simulated dashboards and what they saw."""

    def __init__(self, url: str, key: str, clients: int, seconds: float) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.clients = clients
        self.seconds = seconds
        self.lags_ms: list[float] = []
        self.events = 0
        self.connected_to_end = 0
        self.status_ok = 0
        self.status_failed = 0
        self.driver_cycles = 0

    async def _stream(self, session: aiohttp.ClientSession, until: float) -> None:
        """One dashboard's event stream; counted in `connected_to_end` only if it lasted the whole run."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
        try:
            async with session.get(f"{self.url}/api/events?history=200", headers=self.headers,
                                   timeout=timeout) as resp:
                if resp.status != 200:
                    raise SystemExit(f"bench: /api/events answered {resp.status}")
                while time.time() < until:
                    try:
                        line = await asyncio.wait_for(resp.content.readline(), max(0.1, until - time.time()))
                    except TimeoutError:
                        break
                    if not line:
                        return  # the daemon closed the stream early
                    if line.startswith(b"data: "):
                        ev = json.loads(line[6:])
                        self.events += 1
                        if ev["at"] >= self.started:  # replayed history is not lag
                            self.lags_ms.append((time.time() - ev["at"]) * 1000)
        except aiohttp.ClientError:
            return
        self.connected_to_end += 1

    async def _status(self, session: aiohttp.ClientSession, until: float) -> None:
        while time.time() < until:
            try:
                async with session.get(f"{self.url}/api/status", headers=self.headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self.status_ok += 1
                    else:
                        self.status_failed += 1
            except aiohttp.ClientError:
                self.status_failed += 1
            await asyncio.sleep(STATUS_EVERY_S)

    async def _driver(self, session: aiohttp.ClientSession, until: float) -> None:
        actions = ("load", "release")
        while time.time() < until - 2:
            action = actions[self.driver_cycles % 2]
            async with session.post(f"{self.url}/api/models/{MODEL}/{action}", headers=self.headers) as resp:
                await resp.read()  # 409 (not resident yet) is fine: the next load comes
            self.driver_cycles += 1
            await asyncio.sleep(1.0)

    async def run(self) -> None:
        self.started = time.time()
        until = self.started + self.seconds
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
            tasks = [self._stream(session, until) for _ in range(self.clients)]
            tasks += [self._status(session, until) for _ in range(self.clients)]
            tasks.append(self._driver(session, until))
            await asyncio.gather(*tasks)


def wait_for(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError):
            if pred():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=25, help="dashboards held open (default 25)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they are held (default 60)")
    parser.add_argument("--quick", action="store_true", help="10 seconds instead of --seconds")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 1 <= args.seconds <= MAX_SECONDS:
        raise SystemExit(f"bench: --clients must be 1..{MAX_CLIENTS} and --seconds 1..{MAX_SECONDS}")
    seconds = 10.0 if args.quick else args.seconds
    sys.path.insert(0, str(ROOT))
    from appliance.gateway.keys import KeyStore
    from appliance.store import open_store

    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        config = write_config(tmp, port, free_port())
        store = open_store("", tmp / "state")
        _, key = KeyStore(store).create("bench-ui", admin=True)
        store.close()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        with open(tmp / "daemon.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config", str(config)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            def healthy() -> bool:
                if proc.poll() is not None:
                    raise SystemExit(f"bench: the daemon exited:\n{(tmp / 'daemon.log').read_text()[-2000:]}")
                with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                    return resp.status == 200

            wait_for(healthy, 60, "the daemon's /health")
            daemon = psutil.Process(proc.pid)
            cpu0, wall0 = daemon.cpu_times(), time.monotonic()
            dash = Dashboards(url, key, args.clients, seconds)
            asyncio.run(dash.run())
            cpu1, wall1 = daemon.cpu_times(), time.monotonic()
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    p99 = percentile(dash.lags_ms, 0.99)
    p50 = percentile(dash.lags_ms, 0.50)
    result = {"bench": "ui", "event_clients": dash.connected_to_end, "clients": args.clients, "seconds": seconds,
              "events_received": dash.events, "live_events": len(dash.lags_ms),
              "event_lag_p50_ms": None if p50 is None else round(p50, 2),
              "event_lag_p99_ms": None if p99 is None else round(p99, 2),
              "status_reads": dash.status_ok, "status_failed": dash.status_failed,
              "driver_cycles": dash.driver_cycles,
              "daemon_cpu_cores": round(cpu_s / (wall1 - wall0), 3)}
    ok = dash.connected_to_end == args.clients and dash.status_failed == 0 and result["daemon_cpu_cores"] < 0.5
    print(f"{'OK' if ok else 'NOT OK'}: {dash.connected_to_end}/{args.clients} event streams held for {seconds:g} s, "
          f"event lag p99 {result['event_lag_p99_ms']} ms, daemon CPU {result['daemon_cpu_cores']} cores", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
