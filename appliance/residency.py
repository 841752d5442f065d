"""The lease interface between the gateway and whatever decides GPU residency.

`async with residency.lease(model) as lease:` waits in the model's queue until the model is resident
and its engine ready, yields where to send the request (`lease.endpoint`, a loopback base URL), and
gives the slot back when the block exits (completion, error or client disconnect: cancellation).
Failures to obtain a lease are these exceptions, which the gateway maps to HTTP errors:
`QueueFullError` (429), `CannotFitError` (503), `ModelUnavailable` (503), `NotResident` (409, a
`resident_only` lease for a model not resident), each with a Retry-After.

A lease taken with `preemptible=True` for a model the scheduler may preempt carries a `Preemption`:
the scheduler can take the GPU back mid-stream. The holder registers how to abort its engine
connection (`attach`), reports when it is closed (`detach`), and `await lease.preemption.resume()`
waits in the model's queue again for the lease to continue on (the request keeps its place: it is
queued first).

`DirectResidency` is the trivial implementation (no scheduling: start and activate on demand), used
for models that run on the CPU; the residency manager in `appliance.scheduler.loop` schedules the
GPU and delegates CPU models to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engines.engine import Engine

log = logging.getLogger("appliance.residency")


class LeaseError(Exception):
    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFullError(LeaseError):
    """The model's queue is at its limit (429)."""


class CannotFitError(LeaseError):
    """The model cannot be made resident within the GPU budget (503)."""


class ModelUnavailable(LeaseError):
    """The engine is fatal, stopped, or not ready before the deadline (503)."""


class NotResident(LeaseError):
    """A resident-only lease for a model that is not resident: refused before anything was loaded
    or evicted for it (409, or the status the fleet router asked for)."""


class Preempted(Exception):
    """The scheduler preempted the request before its engine connection was opened."""


class Preemption:
    """The link between one preemptible lease and the residency manager (one per request).

    The manager calls `request()` when the scheduler preempts the request; the holder aborts its
    engine connection through the callback it attached and detaches once the connection is closed,
    which the manager awaits (`wait_detached`) before it releases the engine.
    """

    __slots__ = ("_abort", "_detached", "_resume", "count", "requested")

    def __init__(self, resume: Callable[[], Awaitable[Lease]]) -> None:
        self.requested = False
        self.count = 0  # how many times this request was preempted
        self._abort: Callable[[], None] | None = None
        self._detached = asyncio.Event()
        self._detached.set()
        self._resume = resume

    def attach(self, abort: Callable[[], None]) -> None:
        """An engine connection is open; `abort` closes it. Aborts at once if already preempted."""
        self._abort = abort
        self._detached.clear()
        if self.requested:
            abort()

    def check(self) -> None:
        """Raise `Preempted` if a preemption came before the engine connection was opened."""
        if self.requested:
            raise Preempted

    def detach(self) -> None:
        self._abort = None
        self._detached.set()

    def request(self) -> None:
        """Called by the manager: abort the stream (now if a connection is open, else before it opens)."""
        self.requested = True
        self.count += 1
        if self._abort is not None:
            self._abort()

    async def wait_detached(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._detached.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def resume(self) -> Lease:
        """Wait in the model's queue (first) until the scheduler dispatches the request again."""
        lease = await self._resume()
        self.requested = False
        return lease


@dataclass
class Lease:
    model: str
    endpoint: str  # e.g. http://127.0.0.1:8001
    engine: Engine
    preemption: Preemption | None = None  # set when the scheduler may preempt this request


def weights_missing(model: str, catalog: str) -> ModelUnavailable:
    """A model whose weights are not on this box: only a download helps, so say which command."""
    pull = f"`appliance pull {catalog}`" if catalog else "`appliance pull` (see `appliance models`)"
    return ModelUnavailable(f"model {model!r} has no weights on this box yet: download them with {pull}",
                            retry_after=300)


class DirectResidency:
    """No scheduling: each lease starts the model's engine if needed and activates it."""

    def __init__(self, engines: dict[str, Engine], model_engine: dict[str, str]) -> None:
        self.engines = engines
        self.model_engine = model_engine

    @contextlib.asynccontextmanager
    async def lease(self, model: str, *, deadline_s: float | None = None,
                    preemptible: bool = False, resident_only: bool = False) -> AsyncIterator[Lease]:
        """`preemptible` is accepted for the common interface; nothing here is ever preempted.
        `resident_only`: refuse (NotResident) unless the engine is up already."""
        from .engines.base import ControlError
        from .supervisor.process import EngineUnavailable

        eng = self.engines.get(self.model_engine.get(model, ""))
        if eng is None:
            raise ModelUnavailable(f"model {model!r} has no enabled engine")
        if eng.adapter.missing_weights():
            raise weights_missing(model, eng.adapter.ctx.config.models[model].catalog)
        if resident_only and eng.state.value != "ready":
            raise NotResident(f"model {model!r} is not loaded on this box (X-Route-Policy: resident-only)",
                              retry_after=5.0)
        try:
            await eng.ensure_ready(deadline_s)
            await eng.activate()
        except EngineUnavailable as exc:
            raise ModelUnavailable(f"model {model!r} is unavailable: {exc}", retry_after=exc.retry_after) from exc
        except ControlError as exc:  # the engine died between its probe and the load: it is restarting
            log.warning("model %s: loading on engine %s failed: %s", model, eng.name, exc)
            raise ModelUnavailable(f"model {model!r} could not be loaded: engine {eng.name} is {eng.state.value}",
                                   retry_after=max(1.0, eng.process.retry_in() or 5.0)) from exc
        yield Lease(model, eng.base_url, eng)
