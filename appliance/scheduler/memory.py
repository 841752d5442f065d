"""The memory model: byte budgets for VRAM and host RAM, and measured footprints.

Owns: `MemoryBudget` (VRAM budget = GPU total minus a reserve, host-RAM budget for
slept weights), `Footprints` (a model's footprint is the catalog estimate until the GPU
probe has measured it; the measured peak then replaces it), and the `FootprintStore`
protocol through which the residency loop persists measurements across restarts.

Must not: do I/O. The store protocol is implemented outside the pure core (the loop
writes a file or a table); `InMemoryFootprintStore` exists for tests and the simulator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from appliance.scheduler.types import ModelProfile


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """What the scheduler may fill: VRAM for resident models, host RAM for slept ones."""

    vram_bytes: int
    host_bytes: int

    @classmethod
    def from_gpu(cls, total_bytes: int, reserve_bytes: int, host_bytes: int) -> MemoryBudget:
        """VRAM budget is the card's total minus a reserve for CUDA contexts and fragmentation."""
        if reserve_bytes < 0 or reserve_bytes >= total_bytes:
            raise ValueError("the VRAM reserve must be non-negative and below the GPU total")
        return cls(vram_bytes=total_bytes - reserve_bytes, host_bytes=host_bytes)


class FootprintStore(Protocol):
    """Persistence seam for measured footprints (implemented by the loop; it does the I/O)."""

    def load(self) -> dict[str, int]: ...

    def save(self, footprints: Mapping[str, int]) -> None: ...


class InMemoryFootprintStore:
    """A store that forgets on exit; for tests and the simulator."""

    def __init__(self, initial: Mapping[str, int] | None = None) -> None:
        self._data: dict[str, int] = dict(initial or {})

    def load(self) -> dict[str, int]:
        return dict(self._data)

    def save(self, footprints: Mapping[str, int]) -> None:
        self._data = dict(footprints)


class Footprints:
    """Per-model VRAM footprint: the measured peak when known, else the catalog estimate.

    A measurement only ever raises the peak while the model stays resident (weights at
    load, then KV cache or workflow peaks during requests); `reset_peak` starts a new
    measurement after the engine was reconfigured.
    """

    def __init__(self, profiles: Iterable[ModelProfile], measured: Mapping[str, int] | None = None) -> None:
        self._estimate = {p.id: p.footprint_bytes for p in profiles}
        self._measured: dict[str, int] = {
            m: b for m, b in (measured or {}).items() if m in self._estimate and b > 0
        }
        self._dirty = False

    def of(self, model: str) -> int:
        return self._measured.get(model, self._estimate[model])

    def is_measured(self, model: str) -> bool:
        return model in self._measured

    def observe(self, model: str, used_bytes: int) -> bool:
        """Record a per-process reading; returns True when the known peak changed."""
        if model not in self._estimate or used_bytes <= 0:
            return False
        if used_bytes <= self._measured.get(model, 0):
            return False
        self._measured[model] = used_bytes
        self._dirty = True
        return True

    def reset_peak(self, model: str) -> None:
        if self._measured.pop(model, None) is not None:
            self._dirty = True

    def measured(self) -> dict[str, int]:
        return dict(self._measured)

    def take_dirty(self) -> bool:
        """True once after any change, so the loop persists only when something moved."""
        dirty, self._dirty = self._dirty, False
        return dirty
