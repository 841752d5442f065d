"""How queued jobs reach this box's workers: the `JobQueue` protocol and the local backend.

`LocalQueue` is the store itself (a job is durable the moment `POST /v1/jobs` answers): the ids of
jobs queued here (and, at start, every job left queued) wait in memory, and a worker claims its next
one by id in one transaction; an idle worker looks every `jobs.poll_s` for the oldest job another
process queued. A claim that finds the job gone (cancelled, taken elsewhere) just moves on.
`stop_taking()` (a drain) ends the claims: what is queued stays in the store for the other boxes.
It must not run jobs or decide retries: the runner does.
"""

from __future__ import annotations

import asyncio
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
        """Wait for, claim and return the next job of `model` (state running, owned by this box).
        After `stop_taking()` it claims nothing more and waits until cancelled."""
        ...

    async def stop_taking(self) -> None:
        """Claim no more jobs (a drain): jobs not yet claimed are left to the other boxes."""
        ...

    def describe(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LocalQueue:
    backend = "local"

    def __init__(self, store: Store, owner: str, poll_s: float) -> None:
        self.store = store
        self.owner = owner
        self.poll_s = poll_s
        self._ready: dict[str, asyncio.Queue[str]] = {}
        self._stopped = asyncio.Event()

    async def start(self, models: Iterable[str]) -> None:
        names = list(models)
        self._ready = {m: asyncio.Queue() for m in names}
        for job in await asyncio.to_thread(self.store.jobs_queued, names):  # oldest first
            self._ready[job.model].put_nowait(job.id)

    async def announce(self, job: Job) -> None:
        ready = self._ready.get(job.model)
        if ready is not None:
            ready.put_nowait(job.id)

    async def take(self, model: str) -> Job:
        ready = self._ready.setdefault(model, asyncio.Queue())
        while True:
            if self._stopped.is_set():
                await asyncio.Future()  # drained: nothing more is claimed here; the runner's close cancels this
            try:
                job_id: str | None = await asyncio.wait_for(ready.get(), self.poll_s)
            except TimeoutError:
                job_id = None
            if self._stopped.is_set():
                continue  # the job stays queued in the store, for another box
            if job_id is None:
                job = await self.store.ajob_claim(self.owner, models=[model])
            else:
                job = await self.store.ajob_claim(self.owner, job_id=job_id)
            if job is not None:
                return job

    async def stop_taking(self) -> None:
        self._stopped.set()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "store": self.store.describe()}

    async def close(self) -> None:
        self._ready.clear()
