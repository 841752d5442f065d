"""Who makes up a workload's tail: the requests of one simulated run over a latency threshold.

For one workload, seed and policy, counts the requests whose latency exceeds a threshold (by
default 0.7 x B3's p95 on the same seed, the W4 target), per class, with how long each waited
for its engine and its own service time. It shows why a p95 target can or cannot be reached:
at most 5 % of the requests may exceed the p95.

Usage: python bench/scheduler_tail.py W4 [--rho 0.5] [--seed 0] [--policy ours_free]
                                         [--max-wait image=0.5] [--set KEY=VALUE] [--factor 0.7]
                                         [--threshold S]

Must not: change any policy; it only runs and reports.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scheduler import parse_max_wait, parse_setting

from appliance.scheduler.policy import PolicySettings
from appliance.sim import policies, workloads
from appliance.sim.calibration import Calibration
from appliance.sim.observe import Observations, percentile
from appliance.sim.runner import run


def simulate_run(name: str, rho: float, seed: int, policy: str, settings: PolicySettings,
                 max_wait: dict[str, float] | None, hours: float) -> tuple[Observations, float]:
    cal = Calibration()
    horizon = hours * 3600.0
    w = workloads.build(cal, name, rho, seed, horizon_s=horizon, warmup_s=horizon / 16)
    scheduler, config = policies.build(policy, cal, settings, max_wait)
    return run(w, scheduler, cal, config), w.warmup_s


def latencies(obs: Observations, warmup_s: float) -> dict[str, float]:
    return {r: obs.finished[r] - obs.arrival[r] for r in obs.finished if obs.arrival[r] >= warmup_s}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workload", help="W1, W2cv2, W2cv4, W3s or W4")
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--policy", default="ours", choices=policies.POLICIES)
    ap.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE")
    ap.add_argument("--max-wait", action="append", type=parse_max_wait, default=[], metavar="MODEL=S")
    ap.add_argument("--factor", type=float, default=0.7, help="threshold = this x B3's p95 (default 0.7)")
    ap.add_argument("--threshold", type=float, default=None, help="threshold in seconds instead")
    args = ap.parse_args(argv)
    settings = PolicySettings(**dict(args.settings))
    max_wait = dict(args.max_wait) or None
    if args.threshold is None:
        b3, warm = simulate_run(args.workload, args.rho, args.seed, "B3", PolicySettings(), None, args.hours)
        b3_p95 = percentile(list(latencies(b3, warm).values()), 95)
        threshold = args.factor * b3_p95
        print(f"B3 p95 {b3_p95:.1f} s; threshold {args.factor:g} x B3 = {threshold:.1f} s")
    else:
        threshold = args.threshold
    obs, warm = simulate_run(args.workload, args.rho, args.seed, args.policy, settings, max_wait, args.hours)
    lat = latencies(obs, warm)
    over = sorted((r for r in lat if lat[r] > threshold), key=lambda r: lat[r])
    allowed = int(0.05 * len(lat))
    print(f"{args.policy}: p95 {percentile(list(lat.values()), 95):.1f} s; {len(over)} of {len(lat)} requests over "
          f"{threshold:.1f} s (a p95 at or under it allows {allowed})")
    for cls in sorted({obs.cls[r] for r in over}):
        rs = [r for r in over if obs.cls[r] == cls]
        waits = sorted(round(obs.first_dispatch[r] - obs.arrival[r]) for r in rs)
        own = sorted(round(obs.work[r]) for r in rs)
        print(f"  {cls}: {len(rs)}")
        print(f"    waited for the engine (s): {waits}")
        print(f"    own service at batch 1 (s): {own}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
