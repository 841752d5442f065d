"""`MemoryUsage`: bytes a worker's model holds on the GPU and in host RAM.

Also `ResidentWeights`, the offload/wake/unload half every backend shares. A leaf (torch is only
named for type checking), so `services.weights` (torch only) can be used without the HTTP stack, as
bench/gpu_swap.py does on machines that have torch but not aiohttp.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a model loads
    from services.weights import ModelResidence


@dataclass(frozen=True)
class MemoryUsage:
    gpu_bytes: int = 0
    host_bytes: int = 0


class ResidentWeights:
    """The offload/wake/unload/memory half of a backend whose weights live in a `ModelResidence`.

    Backends set `self._residence` in `load()` and implement `_forget()` to drop their own
    references (pipeline, tokenizer); everything else is the same for every kind.
    """

    _residence: ModelResidence | None = None

    def offload(self) -> None:
        assert self._residence is not None
        self._residence.offload()

    def wake(self) -> None:
        assert self._residence is not None
        self._residence.wake()

    def unload(self) -> None:
        if self._residence is not None:
            self._residence.release()
        self._residence = None
        self._forget()
        gc.collect()

    def _forget(self) -> None:
        """Drop the backend's references to the model objects."""

    def memory(self) -> MemoryUsage:
        return self._residence.memory() if self._residence is not None else MemoryUsage()
