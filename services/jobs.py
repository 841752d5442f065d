"""Cancellable jobs: one per data request of a worker, found by the request id the gateway sends.

Owns the `Job` (a cancel flag the model thread reads between two units of work: a denoising step, a
token, a sentence; the count of units done; whether the model thread is working on it now), and
`Jobs`, the registry of the requests in flight by id (`X-Request-Id`), the ids cancelled before their
request arrived (so a request that loses the race with its own cancellation never runs), and the
counters `/stats` reports: units of work done in all, jobs cancelled, and for the last cancelled job
how many units ran after the cancel (at most one when backends check between units); and `outlast`,
which awaits work on the model thread to its end even when the coroutine waiting for it is cancelled.

Threads: `cancel()` may come from the event loop while the model thread runs the job; the flag is a
`threading.Event` and the counters are only ever written by one side each (units by the model thread,
the registry by the event loop). Must not know HTTP or any model library.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-Id"
MAX_TOMBSTONES = 1024  # cancelled ids whose request has not (yet) arrived; the oldest are forgotten


class Cancelled(Exception):
    """The job was cancelled (its client went away): raised between two units of work."""


class Job:
    __slots__ = ("_flag", "_registry", "done", "request_id", "running", "steps", "steps_at_cancel")

    def __init__(self, request_id: str | None, registry: Jobs | None = None) -> None:
        self.request_id = request_id
        self._registry = registry
        self._flag = threading.Event()
        self.steps = 0  # units of work done (model thread)
        self.steps_at_cancel: int | None = None
        self.running = False  # the model thread is working on it now
        self.done = asyncio.Event()  # set by the event loop once nothing works on it any more

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set()

    def cancel(self) -> None:
        if not self._flag.is_set():
            self.steps_at_cancel = self.steps
            self._flag.set()

    def check(self) -> None:
        """Raise `Cancelled` if the job was cancelled (model thread, before a unit of work)."""
        if self._flag.is_set():
            raise Cancelled(f"request {self.request_id or '(no id)'} was cancelled")

    def step(self) -> None:
        """One unit of work is done (model thread): count it; raise `Cancelled` if cancelled meanwhile."""
        self.steps += 1
        if self._registry is not None:
            self._registry.count_step()
        self.check()


class Jobs:
    """The data requests in flight on one worker, by request id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Job] = {}
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()  # the step counter is the one thing both threads write
        self.steps_total = 0
        self.cancelled = 0
        self.last_cancelled: dict[str, Any] | None = None
        self._open: set[Job] = set()

    def count_step(self) -> None:
        with self._lock:
            self.steps_total += 1

    @property
    def busy(self) -> bool:
        """The model thread is working on a data request now."""
        return any(job.running for job in self._open)

    def open(self, request_id: str | None) -> Job:
        """Register a new request; a request whose id was cancelled before it arrived starts cancelled."""
        job = Job(request_id, self)
        if request_id:
            if request_id in self._tombstones:
                del self._tombstones[request_id]
                job.cancel()
            self._by_id[request_id] = job
        self._open.add(job)
        return job

    def close(self, job: Job) -> None:
        """The request is over and nothing works on it any more."""
        self._open.discard(job)
        if job.request_id and self._by_id.get(job.request_id) is job:
            del self._by_id[job.request_id]
        if job.cancelled:
            self.cancelled += 1
            at = job.steps_at_cancel or 0
            self.last_cancelled = {"request_id": job.request_id, "steps": job.steps,
                                   "steps_after_cancel": job.steps - at}
        job.done.set()

    def cancel(self, request_id: str) -> Job | None:
        """Cancel the request with this id: its job, to be awaited (`job.done`), or None if it is not
        here (finished already, or not arrived yet: then it is refused if it comes)."""
        job = self._by_id.get(request_id)
        if job is not None:
            job.cancel()
            return job
        self._tombstones[request_id] = None
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)
        return None

    def stats(self) -> dict[str, Any]:
        return {"busy": self.busy, "steps": self.steps_total, "jobs_cancelled": self.cancelled,
                "last_cancelled": self.last_cancelled}


async def outlast(future: asyncio.Future[T], on_cancel: Callable[[], None] = lambda: None) -> T:
    """Await `future` to its end even when the caller is cancelled meanwhile: `on_cancel()` is called
    once, the wait goes on, then the cancellation is raised again. For work that keeps running on the
    model thread whatever happens to the coroutine that asked for it."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        on_cancel()
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: the caller's cancellation is what goes on
        raise
