"""Leaf module: the events the daemon publishes (engine state changes, residency, downloads) and the
in-process bus that fans them out to subscribers (the API's event stream, metrics, logs).

It is telemetry only: a slow subscriber loses events, so nothing that must arrive goes through it
(engine lifecycle reaches the residency manager through `ManagedProcess.on_transition`).
It must not import anything from the rest of the package.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str
    subject: str  # engine or model name
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventBus:
    """Publish never blocks: a slow subscriber loses its oldest events, not the publisher's time."""

    def __init__(self, history: int = 500, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._history: deque[Event] = deque(maxlen=history)
        self._queue_size = queue_size

    def publish(self, event: Event, remember: bool = True) -> None:
        """`remember=False`: a periodic sample, sent to subscribers but kept out of the replayed history
        (which would otherwise hold little but samples)."""
        if remember:
            self._history.append(event)
        for q in self._subscribers:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    def recent(self, n: int = 100) -> list[Event]:
        return list(self._history)[-n:]

    def subscribe(self) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(q)
