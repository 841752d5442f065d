"""Usage accounting: what each finished API request cost, reported by the gateway to a sink.

Owns the `UsageRecord` shape (model, key, tokens in/out, images, audio seconds, time on the GPU), the
`UsageSink` protocol the durable sink implements (`appliance.store.usage_sink`), and
`MemoryUsageSink`: bounded history plus running totals per key and model since the start (the
durable sink keeps one for what reads the live process, e.g. metrics).

It must not do I/O or block: `record()` is called on the event loop at the end of every request, so a
persistent sink queues the record and writes it from its own task or thread.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class UsageRecord:
    route: str  # e.g. "/v1/chat/completions"
    model: str
    key_id: str | None  # None when the gateway runs open (loopback, no key exists)
    status: int  # HTTP status the client got (200 also for a stream that ended with an error event)
    tokens_in: int | None = None  # from the engine's usage; None when the engine did not say
    tokens_out: int | None = None
    tokens_exact: bool = True  # False: tokens_out counted from streamed chunks, tokens_in unknown
    images: int = 0
    audio_s: float = 0.0
    gpu_s: float = 0.0  # wall time holding the model's lease (the request's share of the GPU)
    wait_s: float = 0.0  # time waiting for the lease (queue and model load)
    wall_s: float = 0.0  # whole request, first byte in to last byte out
    error: str | None = None  # error code when the request failed
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class UsageSink(Protocol):
    def record(self, rec: UsageRecord) -> None:
        """Accept one finished request; must return at once."""
        ...


@dataclass
class UsageTotals:
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    images: int = 0
    audio_s: float = 0.0
    gpu_s: float = 0.0

    def add(self, rec: UsageRecord) -> None:
        self.requests += 1
        if rec.error is not None:
            self.errors += 1
        self.tokens_in += rec.tokens_in or 0
        self.tokens_out += rec.tokens_out or 0
        self.images += rec.images
        self.audio_s += rec.audio_s
        self.gpu_s += rec.gpu_s


class MemoryUsageSink:
    """Keeps the last `history` records and totals per (key, model) for the life of the daemon."""

    def __init__(self, history: int = 10_000) -> None:
        self._recent: deque[UsageRecord] = deque(maxlen=history)
        self._totals: dict[tuple[str, str], UsageTotals] = {}

    def record(self, rec: UsageRecord) -> None:
        self._recent.append(rec)
        slot = (rec.key_id or "-", rec.model)
        totals = self._totals.get(slot)
        if totals is None:
            totals = self._totals[slot] = UsageTotals()
        totals.add(rec)

    def recent(self, n: int = 100) -> list[UsageRecord]:
        if n <= 0:
            return []
        return list(self._recent)[-n:]

    def totals(self) -> list[dict[str, Any]]:
        return [{"key_id": None if key == "-" else key, "model": model, **asdict(t)}
                for (key, model), t in sorted(self._totals.items())]
