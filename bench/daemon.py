"""Daemon start-up and idle footprint: launch `appliance serve` on the default configuration (no
engine loaded), time launch -> first 200 on /health, then read the daemon's resident memory while
idle. Ends with one line of JSON: {"startup_s", "idle_rss_mb", "imports_torch"}.

Targets (issue 2): startup under 2 s, idle RSS under 150 MB; the daemon never imports torch.
Run: .venv/bin/python bench/daemon.py [--runs 5]
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def loaded_torch(pid: int) -> bool:
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as fh:
        return any("libtorch" in line for line in fh)


def one_run(config: Path) -> tuple[float, float, bool]:
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "APPLIANCE_STATE_DIR": state}
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(Path(sys.executable).parent / "appliance"), "serve", "--config", str(config),
                                 "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = t0 + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.perf_counter() > deadline or proc.poll() is not None:
                    raise SystemExit("daemon did not come up")
                time.sleep(0.01)
            startup = time.perf_counter() - t0
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5).read()
            time.sleep(1.0)  # idle
            return startup, rss_mb(proc.pid), loaded_torch(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--config", type=Path, default=ROOT / "config.toml")
    args = ap.parse_args()
    results = [one_run(args.config) for _ in range(args.runs)]
    starts = [r[0] for r in results]
    rss = [r[1] for r in results]
    print(f"{'run':>4} {'startup_s':>10} {'idle_rss_mb':>12} {'torch':>6}")
    for i, (s, m, t) in enumerate(results, 1):
        print(f"{i:>4} {s:>10.3f} {m:>12.1f} {t!s:>6}")
    out = {"startup_s": round(statistics.median(starts), 3), "idle_rss_mb": round(statistics.median(rss), 1),
           "imports_torch": any(r[2] for r in results)}
    print(f"targets: startup_s < 2 ({'met' if out['startup_s'] < 2 else 'NOT met'}), "
          f"idle_rss_mb < 150 ({'met' if out['idle_rss_mb'] < 150 else 'NOT met'})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
