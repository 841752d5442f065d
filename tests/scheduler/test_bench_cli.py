"""bench/scheduler.py and bench/scheduler_tail.py as a user runs them (short simulated runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_only_runs_the_named_configurations_with_the_settings_given() -> None:
    done = bench("scheduler.py", "--only", "W4", "--seeds", "2", "--hours", "0.5", "--processes", "1",
                 "--set", "idle_switch_hold_s=2", "--max-wait", "image=10")
    assert done.returncode == 0, done.stderr
    assert "our policy with idle_switch_hold_s=2.0, max_wait image=10 s" in done.stdout
    assert "== W4" in done.stdout and "== W1@0.5" not in done.stdout
    assert "Sustainable load" not in done.stdout  # --only skips the search and the target check
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(out) == {"W4", "preemption"} and set(out["preemption"]) == {"W4"}
    assert 0 < out["W4"]["p95_ratio_vs_B3"] < 5 and 0 <= out["W4"]["swap_time_fraction"] < 1


def test_a_setting_that_does_not_exist_is_refused_by_name() -> None:
    done = bench("scheduler.py", "--set", "no_such_knob=1")
    assert done.returncode == 2
    assert "no_such_knob" in done.stderr and "drain_below_s" in done.stderr  # the known keys are listed
    done = bench("scheduler.py", "--set", "restore_after_s=none")  # only an optional setting can be none
    assert done.returncode == 2 and "restore_after_s: expected a number" in done.stderr
    done = bench("scheduler.py", "--max-wait", "gpu=3")
    assert done.returncode == 2 and "llm, image or speech" in done.stderr
    done = bench("scheduler.py", "--only", "W9")
    assert done.returncode == 2 and "W9" in done.stderr


def test_tail_counts_the_requests_over_the_threshold() -> None:
    done = bench("scheduler_tail.py", "W4", "--hours", "1", "--policy", "LB2", "--threshold", "30")
    assert done.returncode == 0, done.stderr
    head = re.search(r"LB2: p95 [\d.]+ s; (\d+) of (\d+) requests over 30\.0 s \(a p95 at or under it allows (\d+)\)",
                     done.stdout)
    assert head is not None, done.stdout
    over, total, allowed = map(int, head.groups())
    assert 0 < over < total and allowed == int(0.05 * total)
    assert "image:" not in done.stdout  # a GPU per model: images never wait past 30 s
    llm = re.search(r"llm: (\d+)", done.stdout)
    assert llm is not None and int(llm.group(1)) == over
