"""`MemoryUsage`: bytes a worker's model holds on the GPU and in host RAM.

A leaf with no imports, so `services.weights` (torch only) can be used without the HTTP stack, as
bench/gpu_swap.py does on machines that have torch but not aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryUsage:
    gpu_bytes: int = 0
    host_bytes: int = 0
