"""Measured transition times per model, persisted so the next start knows them.

Owns: the last `KEEP` durations of each model's wakes, starts (a process start plus load), loads
(into a running process) and releases, their medians, the file they persist to
(`<state_dir>/data/transitions.json`, written atomically), and `costs`, which puts the medians in
place of the configured estimates in a model's `SwapCosts` (the reload costs GreedyDual weighs,
the swap a restore prices, the Retry-After of a full queue).

Must not: time anything itself (the residency manager passes the durations it measured), decide
anything, or fail the daemon over a bad file (an unreadable one counts as empty).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import replace
from pathlib import Path

from appliance.scheduler.types import SwapCosts

KEEP = 16
KINDS = ("wake", "start", "load", "release")
COST_FIELD = {"wake": "wake_s", "start": "cold_start_s", "load": "load_s", "release": "release_s"}


class TransitionTimes:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._samples: dict[str, dict[str, list[float]]] = {}

    def load(self) -> TransitionTimes:
        """Read the file if there is one; anything malformed in it is skipped."""
        if self.path is None:
            return self
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return self
        if not isinstance(data, dict):
            return self
        for model, kinds in data.items():
            if not isinstance(kinds, dict):
                continue
            for kind, values in kinds.items():
                if kind in KINDS and isinstance(values, list):
                    for v in values[-KEEP:]:
                        if isinstance(v, int | float) and not isinstance(v, bool):
                            self.record(str(model), kind, float(v))
        return self

    def record(self, model: str, kind: str, seconds: float) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown transition {kind!r}")
        if not seconds >= 0 or seconds == float("inf"):
            return  # NaN, negative or infinite: not a measurement
        samples = self._samples.setdefault(model, {}).setdefault(kind, [])
        samples.append(seconds)
        del samples[:-KEEP]

    def median(self, model: str, kind: str) -> float | None:
        samples = self._samples.get(model, {}).get(kind)
        return statistics.median(samples) if samples else None

    def medians(self) -> dict[str, dict[str, float]]:
        """{model: {transition: median seconds}} for what has been measured."""
        return {model: {kind: statistics.median(v) for kind, v in kinds.items() if v}
                for model, kinds in self._samples.items()}

    def costs(self, model: str, estimate: SwapCosts) -> SwapCosts:
        """`estimate` with every measured transition replaced by its median."""
        measured = {COST_FIELD[kind]: m for kind in KINDS if (m := self.median(model, kind)) is not None}
        return replace(estimate, **measured) if measured else estimate

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {model: {kind: [round(v, 4) for v in values] for kind, values in kinds.items()}
                for model, kinds in self._samples.items()}
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
