"""The box's life in the fleet registry: its heartbeat, and re-queueing the jobs of boxes that died.

`Heartbeat` puts this box's row (`Store.put_box`: id, advertised URL, version, API version, state from
the readiness getter, residency from the summary callable) every `fleet.heartbeat_s` from `start()`,
and removes it at a clean stop (`close()`). Between `sweep_with(announce)` (once the job queue runs) and
`stop_sweeping()` (before it closes), after each written beat it sweeps for orphaned jobs
(`Store.jobs_requeue_orphans`: running under a box with no row younger than `fleet.expire_s`) and
announces the ones it re-queued on the job queue, so one live box takes over each dead box's job, which
then runs once (the queue's claim).
A write that fails or hangs past its deadline is logged once per outage (and once when it works again);
nothing here ever stops the daemon. Store calls run in worker threads, off the event loop.
It must not decide the box's readiness nor read residency itself: both are handed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..store import BoxRecord, Job, JobState, Store
from . import API_VERSION

log = logging.getLogger("appliance.fleet")
WRITE_DEADLINE_S = 10.0  # one registry write, at most (a beat waits no longer than its interval either)


class Heartbeat:
    def __init__(self, store: Store, *, box_id: str, url: str, version: str, interval_s: float, expire_s: float,
                 summary: Callable[[], dict[str, Any]], readiness: Callable[[], str],
                 announce: Callable[[Job], Awaitable[None]] | None = None, max_attempts: int = 3) -> None:
        self.store = store
        self.box_id = box_id
        self.url = url
        self.version = version
        self.interval_s = interval_s
        self.expire_s = expire_s
        self.summary = summary
        self.readiness = readiness
        self.announce = announce  # None: no sweep (the job queue is not running)
        self._sweeping = asyncio.Lock()
        self.max_attempts = max_attempts
        self.deadline_s = min(WRITE_DEADLINE_S, max(interval_s, 1.0))
        self._down: str | None = None  # what failed, while an outage lasts
        self._write: asyncio.Future[Any] | None = None
        self._unannounced: dict[str, Job] = {}  # re-queued jobs whose announcement failed: tried again
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    def sweep_with(self, announce: Callable[[Job], Awaitable[None]]) -> None:
        """Sweep for dead boxes' jobs after every beat, announcing what is re-queued with `announce`."""
        self.announce = announce

    async def stop_sweeping(self) -> None:
        """No more sweeps (a sweep under way finishes first): the job queue is about to close."""
        async with self._sweeping:
            self.announce = None

    async def _loop(self) -> None:
        while True:
            if await self.beat():
                await self.sweep()
            await asyncio.sleep(self.interval_s)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a thread, within the deadline; a hung call keeps its thread, the next one waits for it."""
        if self._write is not None and not self._write.done():
            raise TimeoutError(f"the previous registry write has not answered in {self.deadline_s:g} s")
        self._write = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(self._write), self.deadline_s)
        except TimeoutError:
            raise TimeoutError(f"no answer from the registry within {self.deadline_s:g} s") from None

    def _failed(self, what: str) -> None:
        if self._down is None:
            log.warning("fleet: %s; the box keeps serving and tries again every %g s", what, self.interval_s)
        self._down = what

    def _recovered(self) -> None:
        if self._down is not None:
            log.warning("fleet: the registry is written again (after: %s)", self._down)
            self._down = None

    def record(self) -> BoxRecord:
        return BoxRecord(self.box_id, self.url, self.version, API_VERSION, self.readiness(), self.summary())

    async def beat(self) -> bool:
        """Write this box's row once; False (logged once per outage) when that failed."""
        try:
            record = self.record()
        except Exception as exc:
            self._failed(f"the residency summary failed ({type(exc).__name__}: {exc})")
            return False
        try:
            await self._call(self.store.put_box, record)
        except Exception as exc:
            self._failed(f"cannot write this box's heartbeat to {self.store.describe()} ({exc})")
            return False
        self._recovered()
        return True

    async def sweep(self) -> list[Job]:
        """Take back dead boxes' running jobs; the ones re-queued here are announced on the job queue."""
        async with self._sweeping:
            if self.announce is None:
                return []
            return await self._sweep(self.announce)

    async def _sweep(self, announce: Callable[[Job], Awaitable[None]]) -> list[Job]:
        try:
            jobs: list[Job] = await self._call(self.store.jobs_requeue_orphans, self.expire_s, self.max_attempts)
        except Exception as exc:
            self._failed(f"cannot look for dead boxes' jobs in {self.store.describe()} ({exc})")
            return []
        for job in jobs:
            if job.state is JobState.QUEUED:
                log.warning("job %s (%s): re-queued, box %s stopped heartbeating while it ran (attempt %d)",
                            job.id, job.model, job.owner, job.attempts)
                self._unannounced[job.id] = job
            else:
                log.warning("job %s (%s): failed for good, box %s stopped heartbeating on its attempt %d of %d",
                            job.id, job.model, job.owner, job.attempts, self.max_attempts)
        for job_id, job in list(self._unannounced.items()):
            try:
                await asyncio.wait_for(announce(job), self.deadline_s)
            except Exception as exc:  # the job stays queued in the store; announced again next sweep
                log.warning("job %s: cannot announce it yet (%s: %s)", job_id, type(exc).__name__, exc)
                break
            del self._unannounced[job_id]
        return jobs

    async def close(self, remove: bool = True) -> None:
        """Stop beating; `remove`: delete the row (a clean stop), so the router drops the box at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not remove:
            return
        if self._write is not None and not self._write.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._write), self.deadline_s)
        try:
            await self._call(self.store.remove_box, self.box_id)
        except Exception as exc:
            log.warning("fleet: cannot remove this box from the registry (%s); it expires in %g s", exc,
                        self.expire_s)
