"""How queued jobs reach this box's workers: the `JobQueue` protocol and the local backend.

`LocalQueue` is the store itself: a worker claims the oldest queued job of its model in one
transaction (durable the moment `POST /v1/jobs` answers), waking at once for jobs submitted here
and every `jobs.poll_s` for jobs another process queued.
It must not run jobs or decide retries: the runner does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

from ..store import Job, Store


class JobQueue(Protocol):
    backend: str

    async def start(self, models: Iterable[str]) -> None:
        """Begin serving the jobs of `models` (the ones this box runs)."""
        ...

    async def announce(self, job: Job) -> None:
        """A job was queued (new, retried or re-queued after a restart): tell the workers."""
        ...

    async def take(self, model: str) -> Job:
        """Wait for, claim and return the next job of `model` (state running, owned by this box)."""
        ...

    def describe(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LocalQueue:
    backend = "local"

    def __init__(self, store: Store, owner: str, poll_s: float) -> None:
        self.store = store
        self.owner = owner
        self.poll_s = poll_s
        self._wake: dict[str, asyncio.Event] = {}

    async def start(self, models: Iterable[str]) -> None:
        self._wake = {m: asyncio.Event() for m in models}

    async def announce(self, job: Job) -> None:
        event = self._wake.get(job.model)
        if event is not None:
            event.set()

    async def take(self, model: str) -> Job:
        event = self._wake.setdefault(model, asyncio.Event())
        while True:
            event.clear()  # before the claim: an announce after it wakes the wait below
            job = await asyncio.to_thread(self.store.job_claim, self.owner, models=[model])
            if job is not None:
                return job
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.poll_s)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "store": self.store.describe()}

    async def close(self) -> None:
        self._wake.clear()
