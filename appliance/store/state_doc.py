"""Named JSON documents the residency core keeps across restarts (measured footprints, transition
times), kept in the store's `state` table behind the load/save interface the scheduler already uses.

`save` is called on the event loop: it queues the write on the store's writer and returns.
It must not interpret the documents: their owners (scheduler.loop, scheduler.timings) do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .protocol import Store, StoreError


class StateDoc(Protocol):
    def load(self) -> dict[str, Any]: ...

    def save(self, data: Mapping[str, Any]) -> None: ...


class StoreStateDoc:
    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name

    def load(self) -> dict[str, Any]:
        """The document, or {} when there is none yet (or the store cannot be read)."""
        try:
            return self.store.state_get(self.name) or {}
        except StoreError:
            return {}

    def save(self, data: Mapping[str, Any]) -> None:
        self.store.state_put_nowait(self.name, dict(data))
