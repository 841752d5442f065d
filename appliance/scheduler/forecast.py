"""Which model is asked for next after the GPU falls idle: a decayed first-order Markov count.

Owns: for each model X, decayed counts of the model whose request first arrived at an idle GPU
after X's last job ended (a voice assistant: after speech comes the next chat). The core reads
the probabilities to bring the likely next model back while the GPU has nothing to do.

Must not: read a clock or know about VRAM; it only counts what the core tells it.
"""

from __future__ import annotations

DECAY = 0.98
"""Each observation after X scales X's older counts by this (about the last 50 idle gaps count)."""


class NextModelForecast:
    def __init__(self, decay: float = DECAY) -> None:
        self._decay = decay
        self._counts: dict[str, dict[str, float]] = {}

    def observe(self, after: str, arrived: str) -> None:
        counts = self._counts.setdefault(after, {})
        for model in counts:
            counts[model] *= self._decay
        counts[arrived] = counts.get(arrived, 0.0) + 1.0

    def probabilities(self, after: str) -> dict[str, float]:
        counts = self._counts.get(after, {})
        total = sum(counts.values())
        return {m: c / total for m, c in counts.items()} if total > 0 else {}

    def observations(self, after: str) -> float:
        """The decayed number of observations behind `probabilities(after)`."""
        return sum(self._counts.get(after, {}).values())
