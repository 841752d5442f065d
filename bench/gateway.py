"""Gateway benchmark: the same load sent directly to a vLLM stand-in and through the appliance gateway.

    python bench/gateway.py [--quick]

Starts a real `appliance serve` (auth on: an API key is created and sent; usage accounting on) with
two vLLM stand-in engines: "bench-fast" answers at once (latency and request rate), "bench-paced"
streams at 30 tokens/s (token rate). The gateway process is pinned to one core; the stand-ins and
the load generator (an aiohttp client in its own process, `loadgen` below) share the other, so the
gateway's own cost is what differs between the two targets. Direct and gateway runs alternate in
blocks to spread the noise of a shared machine over both.

Measures: added latency p50/p99 of small non-streaming requests at one connection; non-streaming
requests/s at 32 connections (ratio gateway/direct); streamed tokens/s at 1, 10 and 50 concurrent
paced streams (ratio); CPU microseconds of the gateway process per request and per streamed chunk.
Ends with one JSON line. Bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "standins" / "vllm_standin.py"
PACE_TPS = 30.0
CHAT = {"messages": [{"role": "user", "content": "say something short"}], "max_tokens": 8}


# --- the load generator (runs in its own process) -------------------------------------------------
async def _latency(session: Any, url: str, headers: dict[str, str], body: bytes, n: int) -> dict[str, Any]:
    lat: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise SystemExit(f"loadgen: {url} answered {resp.status}")
        lat.append(time.perf_counter() - t0)
    return {"latencies_ms": [x * 1000 for x in lat]}


async def _throughput(
    session: Any, url: str, headers: dict[str, str], body: bytes, conc: int, duration: float
) -> dict[str, Any]:
    done = 0
    failed = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done, failed
        while time.perf_counter() < stop_at:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    done += 1
                else:
                    failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    return {"requests": done, "failed": failed, "elapsed_s": elapsed, "rps": done / elapsed}


async def _streams(
    session: Any, url: str, headers: dict[str, str], body: bytes, conc: int, per_worker: int
) -> dict[str, Any]:
    tokens = 0
    chunks = 0

    async def worker() -> None:
        nonlocal tokens, chunks
        for _ in range(per_worker):
            async with session.post(url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    raise SystemExit(f"loadgen: {url} answered {resp.status}: {await resp.text()}")
                async for data in resp.content.iter_any():
                    tokens += data.count(b'{"content":')
                    chunks += data.count(b"data: ")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    return {"tokens": tokens, "events": chunks, "elapsed_s": elapsed, "tokens_per_s": tokens / elapsed}


async def _loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    body = json.dumps(spec["body"]).encode()
    conc = int(spec.get("conc", 1))
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=conc, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(int(spec.get("warmup", 0))):  # open the connections, warm both ends
            async with session.post(spec["url"], data=body, headers=headers) as resp:
                await resp.read()
        mode = spec["mode"]
        if mode == "latency":
            return await _latency(session, spec["url"], headers, body, int(spec["n"]))
        if mode == "throughput":
            return await _throughput(session, spec["url"], headers, body, conc, float(spec["duration"]))
        return await _streams(session, spec["url"], headers, body, conc, int(spec["per_worker"]))


def loadgen_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {int(spec["cpu"])})
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(_loadgen(spec))))


# --- orchestration ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, gw_port: int, fast_port: int, paced_port: int) -> Path:
    py = json.dumps(sys.executable)
    standin = json.dumps(str(STANDIN))
    text = f"""
[server]
state_dir = {json.dumps(str(tmp / "state"))}
port = {gw_port}
log_level = "warning"

[gpu]
probe = "declared"
declared_total_gb = 24

[engines.fast]
kind = "vllm"
model = "bench/fast"
port = {fast_port}
command = [{py}, {standin}]
gpu_memory_utilization = 0.2
max_model_len = 4096
sleep_mode = false
ready_timeout_s = 60

[engines.paced]
kind = "vllm"
model = "bench/paced"
port = {paced_port}
command = [{py}, {standin}]
gpu_memory_utilization = 0.2
max_model_len = 4096
sleep_mode = false
ready_timeout_s = 60
env = {{ VLLM_STANDIN_TOKENS_PER_S = "{PACE_TPS}" }}

[models."bench-fast"]
engine = "fast"
modality = "text"
vram_gb = 4.0
queue_limit = 4096
concurrency = 256

[models."bench-paced"]
engine = "paced"
modality = "text"
vram_gb = 4.0
queue_limit = 4096
concurrency = 256
"""
    path = tmp / "config.toml"
    path.write_text(text)
    return path


def http_json(url: str, key: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def wait_for(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError):
            if pred():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (an engine runs under the supervisor's guard process)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
    return found


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` and of its descendants (sched_setaffinity on a pid only moves
    its main thread, and an engine's server is a child of its guard process)."""
    for p in descendants(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "loadgen", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"bench: loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
        self.gw_port, self.fast_port, self.paced_port = free_port(), free_port(), free_port()
        cpus = sorted(os.sched_getaffinity(0))
        self.gw_cpu = cpus[-1]
        self.other_cpu = cpus[0] if len(cpus) > 1 else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = ""

    def start(self) -> None:
        sys.path.insert(0, str(ROOT))
        from appliance.gateway.keys import KeyStore

        config = write_config(self.tmp, self.gw_port, self.fast_port, self.paced_port)
        _, self.key = KeyStore(self.tmp / "state" / "data" / "keys.db").create("bench", admin=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("APPLIANCE_STATE_DIR", None)
        self.log = open(self.tmp / "daemon.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.tmp,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{self.gw_port}"
        wait_for(lambda: http_json(base + "/health", self.key)["status"] == "ok", 30, "the daemon")
        for model in ("bench-fast", "bench-paced"):  # starts both engines through the lease
            http_json(base + "/v1/chat/completions", self.key, {"model": model, **CHAT, "max_tokens": 1})
        status = http_json(base + "/api/status", self.key)
        self.engine_pids = [e["pid"] for e in status["engines"] if e["pid"]]
        pin_process(self.proc.pid, {self.gw_cpu})
        if self.other_cpu is not None:
            for pid in self.engine_pids:
                pin_process(pid, {self.other_cpu})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in getattr(self, "engine_pids", []):  # the daemon stops them; make sure
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if hasattr(self, "log"):
            self.log.close()

    def spec(self, target: str, model: str, **kw: Any) -> dict[str, Any]:
        if target == "direct":
            port = self.fast_port if model == "bench-fast" else self.paced_port
            url, headers = f"http://127.0.0.1:{port}/v1/chat/completions", {}
        else:
            url = f"http://127.0.0.1:{self.gw_port}/v1/chat/completions"
            headers = {"Authorization": f"Bearer {self.key}"}
        return {"url": url, "headers": headers, "cpu": self.other_cpu, **kw}

    def measured(self, target: str, spec: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Run one loadgen; return its result and the gateway's CPU seconds during it."""
        assert self.proc is not None
        before = cpu_seconds(self.proc.pid)
        result = run_loadgen(spec)
        return result, (cpu_seconds(self.proc.pid) - before) if target == "gateway" else 0.0

    def run(self) -> dict[str, Any]:
        rounds = 2 if self.quick else 4
        n_lat = 300 if self.quick else 1000
        duration = 2.0 if self.quick else 4.0
        body = {"model": "bench-fast", **CHAT}
        lat: dict[str, list[float]] = {"direct": [], "gateway": []}
        rps: dict[str, list[float]] = {"direct": [], "gateway": []}
        gw_cpu, gw_requests = 0.0, 0
        for _ in range(rounds):
            for target in ("direct", "gateway"):
                res, _cpu = self.measured(
                    target, self.spec(target, "bench-fast", mode="latency", n=n_lat, body=body, warmup=20)
                )
                lat[target] += res["latencies_ms"]
        for _ in range(rounds // 2):
            for target in ("direct", "gateway"):
                res, cpu = self.measured(
                    target,
                    self.spec(
                        target, "bench-fast", mode="throughput", conc=32, duration=duration, body=body, warmup=32
                    ),
                )
                rps[target].append(res["rps"])
                if target == "gateway":
                    gw_cpu += cpu
                    gw_requests += res["requests"] + res["failed"] + 32
        print(
            f"latency p50 direct {pct(lat['direct'], 0.5):.3f} ms, gateway {pct(lat['gateway'], 0.5):.3f} ms; "
            f"p99 direct {pct(lat['direct'], 0.99):.3f} ms, gateway {pct(lat['gateway'], 0.99):.3f} ms",
            flush=True,
        )
        print(
            f"32 connections: direct {statistics.mean(rps['direct']):.0f} req/s, "
            f"gateway {statistics.mean(rps['gateway']):.0f} req/s",
            flush=True,
        )
        streams: dict[int, dict[str, float]] = {}
        chunk_cpu, chunk_events = 0.0, 0
        tokens_each = 45 if self.quick else 60
        for conc in (1, 10, 50):
            streams[conc] = {}
            for target in ("direct", "gateway"):
                sbody = {"model": "bench-paced", **CHAT, "max_tokens": tokens_each, "stream": True}
                res, cpu = self.measured(
                    target,
                    self.spec(
                        target, "bench-paced", mode="stream", conc=conc, per_worker=1 if self.quick else 2, body=sbody
                    ),
                )
                streams[conc][target] = res["tokens_per_s"]
                if target == "gateway" and conc == 50:
                    chunk_cpu, chunk_events = cpu, res["events"]
            print(
                f"{conc} paced streams: direct {streams[conc]['direct']:.1f} tok/s, "
                f"gateway {streams[conc]['gateway']:.1f} tok/s "
                f"(ratio {streams[conc]['gateway'] / streams[conc]['direct']:.4f})",
                flush=True,
            )
        return {
            "added_p50_ms": round(pct(lat["gateway"], 0.5) - pct(lat["direct"], 0.5), 3),
            "added_p99_ms": round(pct(lat["gateway"], 0.99) - pct(lat["direct"], 0.99), 3),
            "nonstream_rps_direct_32": round(statistics.mean(rps["direct"]), 1),
            "nonstream_rps_gateway_32": round(statistics.mean(rps["gateway"]), 1),
            "nonstream_throughput_ratio_32": round(statistics.mean(rps["gateway"]) / statistics.mean(rps["direct"]), 3),
            "stream_throughput_ratio_1": round(streams[1]["gateway"] / streams[1]["direct"], 4),
            "stream_throughput_ratio_10": round(streams[10]["gateway"] / streams[10]["direct"], 4),
            "stream_throughput_ratio_50": round(streams[50]["gateway"] / streams[50]["direct"], 4),
            "cpu_us_per_request": round(gw_cpu / max(gw_requests, 1) * 1e6, 1),
            "cpu_us_per_chunk": round(chunk_cpu / max(chunk_events, 1) * 1e6, 1),
        }


TARGETS = (("added_p50_ms", "<=", 1.0), ("added_p99_ms", "<=", 3.0), ("nonstream_throughput_ratio_32", ">=", 0.5),
           ("stream_throughput_ratio_50", ">=", 0.98))


def verdict(result: dict[str, Any]) -> str:
    parts = []
    for key, op, bound in TARGETS:
        ok = result[key] <= bound if op == "<=" else result[key] >= bound
        parts.append(f"{key} {result[key]} {op} {bound}: {'met' if ok else 'MISSED'}")
    return "targets: " + "; ".join(parts)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds (about 30 s)")
    args = parser.parse_args()
    bench = Bench(args.quick)
    try:
        bench.start()
        print(
            f"gateway pinned to CPU {bench.gw_cpu}; stand-ins and load generator on CPU {bench.other_cpu}", flush=True
        )
        result = bench.run()
    finally:
        bench.stop()
    print(verdict(result), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
