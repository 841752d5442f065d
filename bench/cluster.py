"""Fleet benchmark: one box against three behind `appliance router` (real HAProxy), side by side in one run.

    python bench/cluster.py [--quick]

The workload is dominated by engine service time, so this 2-core machine is not the limit: each box
is a real `appliance serve` whose model "slow" is a vLLM stand-in holding every request HOLD_S before
it answers, one request at a time (`models.slow.concurrency = 1`); "fast" answers at once (for the
router's added latency). Boxes share a fresh PostgreSQL database (registry, keys, usage); jobs stay
local (none are sent).

Measures, in order:
1. throughput of "slow" with CLIENTS concurrent clients sent straight to one box (admin key: no
   router token needed), then through the router to three boxes (an ordinary key);
2. the router's added latency: p50 of one-connection "fast" requests through the router minus p50 of
   the same requests (same key, the router's token and resident-only headers) sent straight to the
   three boxes in turn (the router spreads them too), alternating blocks; a plain request (admin key,
   no routing headers) straight to the boxes besides;
3. failover: CLIENTS clients on "slow" through the router, one box SIGKILLed half-way: requests that
   did not answer 200 are lost.
Ends with one JSON line: scaling_ratio_3 (target >= 2.5), router_added_p50_ms (<= 1), and
failover_lost_requests (0). Bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from daemon_harness import Daemon, free_port, to_toml, vllm_engine, wait_for  # noqa: E402
from fleet.router_harness import Router  # noqa: E402

HOLD_S = 0.1
CLIENTS = 12
GIB = 1 << 30
ADMIN_PG = os.environ.get("APPLIANCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SLOW = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "model": "slow"}
FAST = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "model": "fast"}


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int, key: str, headers: dict[str, str] | None = None) -> None:
        self.port, self.key = port, key
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}", **(headers or {})}
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: dict[str, Any]) -> int:
        data = json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request("POST", "/v1/chat/completions", data, self.headers)
                resp = self.conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:  # a kept-alive connection the server had closed is retried once, as clients do
                    return 0
        return 0


def load(port: int, key: str, duration_s: float, clients: int = CLIENTS,
         during: Any = None) -> tuple[float, list[int]]:
    """(completed requests per second, statuses) of `clients` back-to-back clients for `duration_s`."""
    statuses: list[int] = []
    lock = threading.Lock()
    end = time.monotonic() + duration_s

    def run() -> None:
        c = Client(port, key)
        while time.monotonic() < end:
            status = c.post(SLOW)
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    if during is not None:
        time.sleep(duration_s / 2)
        during()
    for t in threads:
        t.join(duration_s + 60)
    elapsed = time.monotonic() - start
    return sum(1 for s in statuses if s == 200) / elapsed, statuses


def latencies(ports: list[int], key: str, n: int, headers: dict[str, str] | None = None) -> list[float]:
    """One request at a time, each on the next port's kept-alive connection in turn."""
    clients = [Client(port, key, headers) for port in ports]
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        assert clients[i % len(clients)].post(FAST) == 200
        out.append(time.perf_counter() - t0)
    return out


def box_doc(d: Daemon, name: str, store_url: str, token_file: Path) -> dict[str, Any]:
    slow_env = {"VLLM_STANDIN_TTFT_S": str(HOLD_S), "VLLM_STANDIN_FOOTPRINT_BYTES": str(8 * GIB)}
    fast_env = {"VLLM_STANDIN_FOOTPRINT_BYTES": str(4 * GIB)}
    return {
        "server": {"state_dir": str(d.state), "port": d.port, "load_deadline_s": 60.0, "log_level": "warning"},
        "gpu": {"probe": "fake", "fake_dir": str(d.fake_gpu), "declared_total_gb": 24},
        "store": {"url": store_url},
        "jobs": {"box_id": name},
        "fleet": {"enabled": True, "advertise_url": d.url, "token_file": str(token_file), "heartbeat_s": 0.5,
                  "expire_s": 3.0},
        "engines": {"slow": vllm_engine(free_port(), env=slow_env), "fast": vllm_engine(free_port(), env=fast_env)},
        "models": {"slow": {"engine": "slow", "modality": "text", "vram_gb": 8.0, "concurrency": 1,
                            "max_wait_s": 120.0, "queue_limit": 256},
                   "fast": {"engine": "fast", "modality": "text", "vram_gb": 4.0}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter phases (a smoke run)")
    args = ap.parse_args()
    phase_s = 4.0 if args.quick else 8.0
    lat_n = 100 if args.quick else 300

    import psycopg

    from appliance.gateway.keys import KeyStore
    from appliance.store import open_store

    db = f"bench_cluster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_PG, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    store_url = f"{ADMIN_PG.rsplit('/', 1)[0]}/{db}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    store = open_store(store_url, None)
    router = Router(tmp, store_url, expire_s=3.0, check_interval_ms=300)
    boxes: list[Daemon] = []
    try:
        router.start()
        _, admin = KeyStore(store).create("bench-admin", admin=True)
        _, user = KeyStore(store).create("bench-user")
        for i in (1, 2, 3):
            (tmp / f"box{i}").mkdir()
            d = Daemon(tmp / f"box{i}", {})
            token_file = d.tmp / "fleet.token"
            token_file.write_text(router.fleet_token + "\n")
            d.config.write_text(to_toml(box_doc(d, f"box{i}", store_url, token_file)))
            boxes.append(d.start())
        for d in boxes:  # load both models on every box before measuring
            for body in (SLOW, FAST):
                assert Client(d.port, admin).post(body) == 200
        try:
            wait_for(lambda: set(router.haproxy_map()) >= {"slow", "fast"} and
                     sum(v == "UP" for k, v in router.server_states().items() if k.startswith("boxes/b")) == 3,
                     30, "the router routing to three boxes")
        except TimeoutError:
            print(router.haproxy_map(), router.server_states(), router.log.read_text()[-2000:], file=sys.stderr)
            raise
        # 1. one box straight, then three behind the router
        one, _ = load(boxes[0].port, admin, phase_s)
        three, _ = load(router.port, user, phase_s)
        # 2. the router's added latency, alternating blocks
        # The baseline is the request a box gets from the router (same key, the router's token and its
        # resident-only headers) sent straight to one box, so only the hop differs; a plain request
        # (admin key, no routing headers) shows what the box's resident-only check costs.
        as_routed = {"X-Fleet-Token": router.fleet_token, "X-Route-Policy": "resident-only",
                     "X-Route-Retry-Status": "503"}
        plain: list[float] = []
        direct: list[float] = []
        routed: list[float] = []
        # The router spreads requests over the three boxes, so the straight requests rotate over them too.
        ports = [d.port for d in boxes]
        for _ in range(3):
            plain += latencies(ports, admin, lat_n)
            direct += latencies(ports, user, lat_n, as_routed)
            routed += latencies([router.port], user, lat_n)
        added_ms = (statistics.median(routed) - statistics.median(direct)) * 1000
        # 3. failover: one box killed half-way through the load
        _, statuses = load(router.port, user, phase_s, during=boxes[2].kill)
        lost = sum(1 for s in statuses if s != 200)
        print(f"one box:            {one:7.1f} req/s (service time {HOLD_S * 1000:.0f} ms, one at a time)")
        print(f"three via router:   {three:7.1f} req/s  ratio {three / one:.2f}")
        print(f"fast p50: straight to the boxes {statistics.median(direct) * 1000:.3f} ms (plain request "
              f"{statistics.median(plain) * 1000:.3f} ms), via the router {statistics.median(routed) * 1000:.3f} ms: "
              f"the router adds {added_ms:.3f} ms")
        print(f"failover: {len(statuses)} requests, {lost} not answered 200, box3 killed half-way")
        print(json.dumps({"scaling_ratio_3": round(three / one, 3), "router_added_p50_ms": round(added_ms, 3),
                          "failover_lost_requests": lost, "one_box_rps": round(one, 2),
                          "box_p50_ms": round(statistics.median(direct) * 1000, 3),
                          "box_plain_p50_ms": round(statistics.median(plain) * 1000, 3),
                          "three_boxes_rps": round(three, 2), "hold_ms": HOLD_S * 1000, "clients": CLIENTS}))
    finally:
        pids = []
        for d in boxes:
            status = d.get("/api/status") or {}
            pids += [e["pid"] for e in status.get("engines", []) if e.get("pid")]
        for d in boxes:
            d.stop()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        router.stop()
        store.close()
        with psycopg.connect(ADMIN_PG, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
