"""Benchmark of the residency scheduler against the peers' policies, in virtual time.

Runs the pure core (and the baselines B1 llama-swap, B2 Ollama, B3 Ollama rules with our
sleep/wake mechanism, the references LBps and LB2, the free-swap ablation and the
stream-preemption variant) over the workloads W1, W2cv2, W2cv4, W3s and W4 from
`appliance.sim`, 8 simulated hours x 10 seeds each by default (first half hour dropped),
on at most 2 processes. Prints one table per workload with 95% confidence intervals
over the seeds, the sustainable load search, the targets, and ends with one line of JSON.

Usage: python bench/scheduler.py [--quick] [--seeds N] [--first-seed K] [--hours H] [--calibration FILE]
                                 [--restore] [--set KEY=VALUE ...] [--max-wait MODEL=S ...]
                                 [--only W3s@0.5,W4 ...]

`--set` changes one of our policy's settings (`PolicySettings` in appliance/scheduler/policy.py,
e.g. `--set drain_below_s=3`), `--max-wait` one model's starvation bound (`llm`, `image`,
`speech`; with preemption too), so that any sweep quoted in docs/scheduler.md reruns from here.
`--only` runs just the named configurations and skips the sustainable-load search and the
target check (its JSON line then holds those configurations only).

Must not: change any policy; it only runs and reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.scheduler.policy import PolicySettings
from appliance.sim import workloads
from appliance.sim.calibration import Calibration, load_calibration
from appliance.sim.observe import percentile
from appliance.sim.policies import POLICIES, simulate

TABLE_CONFIGS = [
    ("W1", 0.3), ("W1", 0.5), ("W1", 0.7), ("W1", 0.9),
    ("W2cv2", 0.5), ("W2cv2", 0.7), ("W2cv4", 0.5), ("W2cv4", 0.7),
    ("W3s", 0.5), ("W3s", 0.7), ("W4", 0.5),
]  # fmt: skip
JSON_CONFIGS = [c for c in TABLE_CONFIGS if c[1] in (0.5, 0.7)]
CLASSES = ("llm", "image", "speech")
SUSTAINABLE_P95_S = 120.0
B1_ABORT_BACKLOG = 2000  # B1 beyond its capacity: stop the run, it is unstable
MAX_SEARCH_RHO = 2.0


def key(name: str, rho: float) -> str:
    return name if name == "W4" else f"{name}@{rho:g}"


# ------------------------------------------------------------------ one run


@dataclasses.dataclass(frozen=True)
class Variant:
    """Our policy's settings and starvation bounds for this run (defaults unless overridden)."""

    settings: tuple[tuple[str, Any], ...] = ()
    max_wait_s: tuple[tuple[str, float], ...] = ()

    def policy_settings(self) -> PolicySettings:
        return PolicySettings(**dict(self.settings))


def parse_setting(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` for a `PolicySettings` field, the value converted to the field's type."""
    name, sep, raw = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(PolicySettings)}
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
    default = getattr(PolicySettings(), name)
    value: Any
    if raw.lower() in ("none", "off") and default is None:
        value = None
    elif isinstance(default, bool):
        if raw.lower() not in ("true", "false", "on", "off", "1", "0"):
            raise argparse.ArgumentTypeError(f"--set {name}: expected true or false, not {raw!r}")
        value = raw.lower() in ("true", "on", "1")
    else:
        try:
            value = int(raw) if isinstance(default, int) else float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--set {name}: expected a number, not {raw!r}") from None
    return name, value


def parse_max_wait(text: str) -> tuple[str, float]:
    """`MODEL=SECONDS` for one of the simulated models."""
    model, _, raw = text.partition("=")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if model not in ("llm", "image", "speech") or not seconds >= 0:
        raise argparse.ArgumentTypeError(f"--max-wait {text!r}: expected MODEL=SECONDS, MODEL llm, image or speech")
    return model, seconds


def run_one(task: tuple[str, float, int, str, float, str | None, bool, Variant]) -> dict[str, Any]:
    name, rho, seed, policy, hours, cal_path, search, variant = task
    cal = load_calibration(Path(cal_path)) if cal_path else Calibration()
    horizon = hours * 3600.0
    w = workloads.build(cal, name, rho, seed, horizon_s=horizon, warmup_s=horizon / 16)
    abort = B1_ABORT_BACKLOG if (policy == "B1" or search) else None
    mw = dict(variant.max_wait_s) if policy.startswith("ours") and variant.max_wait_s else None
    s = simulate(policy, w, cal, settings=variant.policy_settings(), abort_backlog=abort, max_wait_s=mw)
    every = [x for v in s.latency.values() for x in v]
    return {
        "name": name, "rho": rho, "seed": seed, "policy": policy,
        "p50": percentile(every, 50), "p95": percentile(every, 95), "p99": percentile(every, 99),
        "class": {c: [percentile(s.latency.get(c, []), q) for q in (50, 95, 99)] for c in CLASSES},
        "lb0": percentile(s.own_service, 95),
        "swaps_h": s.swaps_per_hour, "gb_h": s.gb_moved_per_hour, "swap_frac": s.swap_time_fraction,
        "stall_frac": s.swap_stall_fraction,
        "starve_s": s.starvation_max_s, "violations": s.starvation_violations,
        "unstable": s.unstable, "incomplete": s.incomplete, "abandoned": s.abandoned,
    }  # fmt: skip


# --------------------------------------------------------------- statistics

T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045]


def mean_ci(values: Iterable[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (Student t over seeds)."""
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    if len(v) == 1:
        return v[0], math.nan
    t = T975[len(v) - 2] if len(v) - 2 < len(T975) else 1.96
    return statistics.fmean(v), t * statistics.stdev(v) / math.sqrt(len(v))


def fmt(mc: tuple[float, float], digits: int = 1) -> str:
    m, h = mc
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if math.isnan(h) else f"{m:.{digits}f}±{h:.{digits}f}"


def paired(rows: dict[str, list[dict[str, Any]]], a: str, b: str, field: str) -> list[float]:
    """Per-seed ratios a/b of a field (seeds share their random numbers across policies)."""
    by_seed = {r["seed"]: r[field] for r in rows.get(b, [])}
    return [r[field] / by_seed[r["seed"]] for r in rows.get(a, []) if by_seed.get(r["seed"])]


# ------------------------------------------------------------------- tables


def print_table(k: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\n== {k}  (seconds; mean ± 95% CI over {len(rows['ours'])} seeds; starve max: longest wait counted by"
          " the starvation bound; viol: requests over our bound, for baselines only as a comparison)")
    head = (
        f"{'policy':18s} {'p50':>11s} {'p95':>12s} {'p99':>12s} {'swaps/h':>10s} {'GB/h':>12s} {'swap %':>10s}"
        f" {'stall %':>10s}"
        f" {'starve max':>11s} {'viol':>4s}   per class p50 / p95 / p99"
    )
    print(head)
    for policy in POLICIES:
        rs = rows.get(policy, [])
        if not rs:
            continue
        if any(r["unstable"] for r in rs):
            unstable = sum(r["unstable"] for r in rs)
            print(f"{policy:18s} unstable in {unstable}/{len(rs)} seeds (backlog grows); p95 of finished "
                  f"{fmt(mean_ci(r['p95'] for r in rs))}")
            continue
        per_class = "  ".join(
            f"{c} " + "/".join(fmt(mean_ci(r["class"][c][i] for r in rs)) for i in range(3))
            for c in CLASSES
            if not all(math.isnan(r["class"][c][1]) for r in rs)
        )
        print(
            f"{policy:18s} {fmt(mean_ci(r['p50'] for r in rs)):>11s} {fmt(mean_ci(r['p95'] for r in rs)):>12s}"
            f" {fmt(mean_ci(r['p99'] for r in rs)):>12s} {fmt(mean_ci(r['swaps_h'] for r in rs)):>10s}"
            f" {fmt(mean_ci(r['gb_h'] for r in rs)):>12s} {fmt(mean_ci(100 * r['swap_frac'] for r in rs), 2):>10s}"
            f" {fmt(mean_ci(100 * r['stall_frac'] for r in rs), 2):>10s}"
            f" {fmt(mean_ci(r['starve_s'] for r in rs)):>11s} {sum(r['violations'] for r in rs):>4d}   {per_class}"
        )
    print(f"{'LB0 (own service)':18s} {'':>11s} {fmt(mean_ci(r['lb0'] for r in rows['ours'])):>12s}")
    ratios = {
        "ours/B3": paired(rows, "ours", "B3", "p95"), "ours/B2": paired(rows, "ours", "B2", "p95"),
        "ours/free": paired(rows, "ours", "ours_free", "p95"), "ours/LBps": paired(rows, "ours", "LBps", "p95"),
        "preempt/B3": paired(rows, "ours_preempt", "B3", "p95"),
    }  # fmt: skip
    print("p95 ratios: " + "  ".join(f"{n} {fmt(mean_ci(v), 3)}" for n, v in ratios.items()))


def summary(rows: dict[str, list[dict[str, Any]]], ours: str, free: str) -> dict[str, float]:
    def avg(v: Sequence[float]) -> float:
        return round(statistics.fmean(v), 4) if v else math.nan

    return {
        "p95_ratio_vs_B2": avg(paired(rows, ours, "B2", "p95")),
        "p95_ratio_vs_B3": avg(paired(rows, ours, "B3", "p95")),
        "swap_time_fraction": avg([r["swap_frac"] for r in rows[ours]]),
        "swaps_ratio_vs_B3": avg(paired(rows, ours, "B3", "swaps_h")),
        "ratio_vs_free_swaps": avg(paired(rows, ours, free, "p95")),
        "ratio_vs_LBps": avg(paired(rows, ours, "LBps", "p95")),
    }


# ------------------------------------------------------- sustainable load


def sustainable(
    pool: Any, policy: str, seeds: range, hours: float, cal_path: str | None, variant: Variant
) -> tuple[float, str]:
    """Highest rho (steps of 0.1) where the mean p95 over seeds stays under 120 s and the backlog
    does not grow (at most one seed showing growth). When no step of 0.1 passes, the search
    continues below 0.1 in steps of 0.01 so that a ratio can still be formed."""

    def passes(rho: float) -> bool:
        tasks = [("W1", rho, s, policy, hours, cal_path, True, variant) for s in seeds]
        res = pool.map(run_one, tasks, chunksize=1)
        grown = sum(r["unstable"] for r in res)
        return grown <= max(1, len(seeds) // 10) and statistics.fmean(r["p95"] for r in res) < SUSTAINABLE_P95_S

    best = 0.0
    rho = 0.1
    while rho <= MAX_SEARCH_RHO + 1e-9 and passes(round(rho, 2)):
        best = round(rho, 2)
        rho += 0.1
    if best > 0:
        return best, "0.1 steps"
    for rho_fine in (0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01):
        if passes(rho_fine):
            return rho_fine, "0.01 steps below 0.1"
    return 0.0, "none"


# ------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 simulated hours, 3 seeds")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 10)")
    ap.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--hours", type=float, default=None, help="simulated hours per run (default 8)")
    ap.add_argument("--processes", type=int, default=2, help="worker processes (at most 2)")
    ap.add_argument("--calibration", default=None, help="JSON or TOML file replacing calibration defaults")
    ap.add_argument("--restore", action="store_true", help="our policy with scheduler.restore on")
    ap.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE",
                    help="one of our policy's settings (PolicySettings), e.g. drain_below_s=3; repeatable")
    ap.add_argument("--max-wait", action="append", type=parse_max_wait, default=[], metavar="MODEL=S",
                    help="one model's max_wait for our policy (llm, image, speech); repeatable")
    ap.add_argument("--only", default=None, metavar="CONFIGS",
                    help="comma-separated configurations to run (e.g. W3s@0.5,W4); no load search or target check")
    args = ap.parse_args(argv)
    settings = dict(args.settings) | ({"restore": True} if args.restore else {})
    variant = Variant(tuple(sorted(settings.items())), tuple(sorted(args.max_wait)))
    configs = TABLE_CONFIGS
    if args.only:
        known = {key(n, r): (n, r) for n, r in TABLE_CONFIGS}
        wanted = [c.strip() for c in args.only.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in known]
        if unknown:
            ap.error(f"--only: unknown configurations {unknown}; known: {', '.join(known)}")
        configs = [known[c] for c in wanted]
    seeds = range(args.first_seed, args.first_seed + (args.seeds or (3 if args.quick else 10)))
    hours = args.hours or (2.0 if args.quick else 8.0)
    cal_path = str(Path(args.calibration).resolve()) if args.calibration else None
    procs = max(1, min(2, args.processes, os.cpu_count() or 1))
    started = time.monotonic()
    tasks = [(n, r, s, p, hours, cal_path, False, variant) for n, r in configs for p in POLICIES for s in seeds]
    with Pool(procs) as pool:
        results = pool.map(run_one, tasks, chunksize=1)
        if not args.only:
            ours_load, ours_how = sustainable(pool, "ours", seeds, hours, cal_path, variant)
            b1_load, b1_how = sustainable(pool, "B1", seeds, hours, cal_path, Variant())
    by_config: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for res in results:
        by_config.setdefault(key(res["name"], res["rho"]), {}).setdefault(res["policy"], []).append(res)
    print(f"Residency scheduler benchmark: {hours:g} simulated hours x {len(seeds)} seeds per configuration "
          f"({seeds.start}-{seeds.stop - 1}), "
          f"first {60 * hours / 16:g} min dropped, {procs} processes")
    if variant != Variant():
        print("our policy with " + ", ".join([f"{k}={v}" for k, v in variant.settings]
                                            + [f"max_wait {m}={v:g} s" for m, v in variant.max_wait_s]))
    for n, r in configs:
        print_table(key(n, r), by_config[key(n, r)])
    if args.only:
        partial = {key(n, r): summary(by_config[key(n, r)], "ours", "ours_free") for n, r in configs}
        partial["preemption"] = {
            key(n, r): summary(by_config[key(n, r)], "ours_preempt", "ours_preempt_free") for n, r in configs
        }
        print(f"elapsed {time.monotonic() - started:.0f} s")
        print(json.dumps(partial, separators=(",", ":")))
        return 0
    ratio = ours_load / b1_load if b1_load else math.inf
    print(f"\nSustainable load on W1 (p95 < {SUSTAINABLE_P95_S:g} s, backlog not growing): ours {ours_load:g} "
          f"({ours_how}), B1 {b1_load:g} ({b1_how}), ratio {ratio:.2f}")
    out: dict[str, Any] = {key(n, r): summary(by_config[key(n, r)], "ours", "ours_free") for n, r in JSON_CONFIGS}
    out["sustainable_load_ratio_vs_B1"] = round(ratio, 3) if math.isfinite(ratio) else None
    ours_runs = [x for x in results if x["policy"].startswith("ours")]
    out["starvation_violations"] = sum(x["violations"] for x in ours_runs)
    out["abandoned_at_drain_deadline"] = sum(x["abandoned"] for x in ours_runs)
    out["preemption"] = {
        key(n, r): summary(by_config[key(n, r)], "ours_preempt", "ours_preempt_free") for n, r in JSON_CONFIGS
    }
    print_targets(out, by_config)
    print(f"elapsed {time.monotonic() - started:.0f} s")
    print(json.dumps(out, separators=(",", ":")))
    return 0


def print_targets(out: dict[str, Any], by_config: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    checks: list[tuple[str, bool]] = []
    for k, rows in by_config.items():
        checks.append((f"{k}: p95 not worse than B3", statistics.fmean(paired(rows, "ours", "B3", "p95")) <= 1.0))
    for k, limit in (("W1@0.7", 0.8), ("W3s@0.7", 0.8), ("W4", 0.7)):
        checks.append((f"{k}: p95 <= {limit} x B3", out[k]["p95_ratio_vs_B3"] <= limit))
    for k in ("W1@0.5", "W1@0.7", "W2cv2@0.5", "W2cv2@0.7", "W3s@0.5", "W3s@0.7", "W4"):
        checks.append((f"{k}: p95 <= 0.8 x B2", out[k]["p95_ratio_vs_B2"] <= 0.8))
    for k in ("W2cv4@0.5", "W2cv4@0.7"):
        checks.append((f"{k}: p95 <= 0.95 x B2", out[k]["p95_ratio_vs_B2"] <= 0.95))
    for k, v in out.items():
        if isinstance(v, dict) and "swap_time_fraction" in v and k != "preemption":
            checks.append((f"{k}: swapping <= 5% of the time", v["swap_time_fraction"] <= 0.05))
            checks.append((f"{k}: swaps/h <= B3", v["swaps_ratio_vs_B3"] <= 1.0))
            checks.append((f"{k}: p95 <= 1.1 x free swaps", v["ratio_vs_free_swaps"] <= 1.1))
    ratio = out["sustainable_load_ratio_vs_B1"]
    checks.append(("sustainable load >= 3 x B1", ratio is None or ratio >= 3.0))
    checks.append(("zero starvation violations", out["starvation_violations"] == 0))
    checks.append(("no request abandoned at a drain deadline", out["abandoned_at_drain_deadline"] == 0))
    pre = out["preemption"]
    for k in ("W1@0.5", "W3s@0.5"):
        checks.append((f"preemption {k}: p95 <= 0.85 x B3 (aim)", pre[k]["p95_ratio_vs_B3"] <= 0.85))
    for k in ("W1@0.7", "W3s@0.7"):
        checks.append((f"preemption {k}: p95 <= 0.75 x B3 (aim)", pre[k]["p95_ratio_vs_B3"] <= 0.75))
    met = sum(ok for _, ok in checks)
    print(f"\nTargets: {met}/{len(checks)} met")
    for name, ok in checks:
        if not ok:
            print(f"  NOT MET  {name}")


if __name__ == "__main__":
    raise SystemExit(main())
