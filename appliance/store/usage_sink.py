"""The durable usage sink: `record()` never blocks a request; records reach the store in batches.

`record()` appends to an in-memory batch (and to the since-start totals that /metrics reads) and
returns. One task (`run`) writes the batch every `store.usage_flush_s`, or as soon as it holds
`store.usage_batch_max` records, in one transaction off the event loop. What kill -9 can lose is
bounded: the records accepted in the last `usage_flush_s` plus the batch being written (a write in
progress when the process dies is rolled back whole). A store that fails keeps the batch for the
next try, up to `MAX_PENDING` records; older records beyond that are dropped and counted.
It must not be read for reports: `GET /api/usage` queries the store (after `flush()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..usage import MemoryUsageSink, UsageRecord
from .protocol import Store, StoreError

log = logging.getLogger("appliance.store")
MAX_PENDING = 200_000


class StoreUsageSink:
    def __init__(self, store: Store, flush_s: float = 1.0, batch_max: int = 5000) -> None:
        self.store = store
        self.flush_s = flush_s
        self.batch_max = batch_max
        self.since_start = MemoryUsageSink(history=1000)
        self.dropped = 0
        self._pending: list[UsageRecord] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None

    # -- the request path
    def record(self, rec: UsageRecord) -> None:
        self.since_start.record(rec)
        self._pending.append(rec)
        if len(self._pending) > MAX_PENDING:
            excess = len(self._pending) - MAX_PENDING
            del self._pending[:excess]
            self.dropped += excess
        if len(self._pending) >= self.batch_max and self._wake is not None:
            self._wake.set()

    def recent(self, n: int = 100) -> list[UsageRecord]:
        return self.since_start.recent(n)

    def totals(self) -> list[dict[str, Any]]:
        return self.since_start.totals()

    # -- the writer task
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write what is pending now; returns how many records were written."""
        if self._lock is None:
            return self._write_now()
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                await asyncio.to_thread(self.store.usage_insert, batch)
            except (StoreError, OSError, ValueError) as exc:
                log.warning("usage: cannot write %d records to %s (kept for the next try): %s",
                            len(batch), self.store.describe(), exc)
                self._pending[:0] = batch
                return 0
            return len(batch)

    def _write_now(self) -> int:
        batch, self._pending = self._pending, []
        self.store.usage_insert(batch)
        return len(batch)

    async def close(self) -> None:
        """Stop the task and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
