"""bench/gpu_swap.py must keep working: its CPU smoke run drives the real text worker end to end.

The numbers of a CPU run mean nothing (the script says so); this only proves the script, the model it
builds and the worker path it drives still fit together. The real measurement needs a CUDA machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from worker_harness import OFFLINE_ENV, REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "gpu_swap.py"


def test_cpu_smoke_run_through_the_worker(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = ["--device", "cpu", "--size-gb", "0.05", "--cycles", "1", "--mode", "worker", "--json-out", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=240, env={**os.environ, **OFFLINE_ENV})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "worker" and result["same_output_after_wake"] is True
    assert result["arena_bytes"] >= result["model"]["bytes"] and len(result["cycles"]) == 1
    assert result["raw"]["gbps"] > 0 and result["cycles"][0]["wake_gbps"] > 0
    assert "CPU smoke run" in done.stdout


def test_without_cuda_it_says_so() -> None:
    if torch.cuda.is_available():  # on a GPU machine the bare command is the real three-minute benchmark
        return
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
