"""Measured transition times per model.

Owns: the last `KEEP` durations of each model's wakes, starts (a process start plus load), loads
(into a running process) and releases, their medians, their plain-data form (`from_mapping`
tolerates anything malformed, `as_mapping`), and `costs`, which puts the medians in place of the
configured estimates in a model's `SwapCosts` (the reload costs GreedyDual weighs, the swap a
restore prices, the Retry-After of a full queue).

Must not: time anything, read or write files (the residency manager measures the durations and
keeps them in the store, or a JSON file under `<state_dir>/data` without one), or decide anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from appliance.scheduler.types import SwapCosts

KEEP = 16
KINDS = ("wake", "start", "load", "release")
COST_FIELD = {"wake": "wake_s", "start": "cold_start_s", "load": "load_s", "release": "release_s"}


class TransitionTimes:
    def __init__(self) -> None:
        self._samples: dict[str, dict[str, list[float]]] = {}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TransitionTimes:
        """From `as_mapping`'s form; anything malformed in it is skipped."""
        times = cls()
        for model, kinds in data.items():
            if not isinstance(kinds, dict):
                continue
            for kind, values in kinds.items():
                if kind in KINDS and isinstance(values, list):
                    for v in values[-KEEP:]:
                        if isinstance(v, int | float) and not isinstance(v, bool):
                            times.record(str(model), kind, float(v))
        return times

    def as_mapping(self) -> dict[str, dict[str, list[float]]]:
        """{model: {transition: [seconds, ...]}}, the samples kept, for persisting."""
        return {model: {kind: [round(v, 4) for v in values] for kind, values in kinds.items()}
                for model, kinds in self._samples.items()}

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
        return {model: {kind: m for kind in kinds if (m := self.median(model, kind)) is not None}
                for model, kinds in self._samples.items()}

    def costs(self, model: str, estimate: SwapCosts) -> SwapCosts:
        """`estimate` with every measured transition replaced by its median."""
        measured = {COST_FIELD[kind]: m for kind in KINDS if (m := self.median(model, kind)) is not None}
        return replace(estimate, **measured) if measured else estimate
