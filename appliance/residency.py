"""The lease interface between the gateway and whatever decides GPU residency.

`async with residency.lease(model) as lease:` waits in the model's queue until the model is resident
and its engine ready, yields where to send the request (`lease.endpoint`, a loopback base URL), and
gives the slot back when the block exits (completion, error or client disconnect: cancellation).
Failures to obtain a lease are these exceptions, which the gateway maps to HTTP errors:
`QueueFullError` (429), `CannotFitError` (503), `ModelUnavailable` (503), each with a Retry-After.

`DirectResidency` is the trivial implementation (no scheduling: start and activate on demand), used
for models that run on the CPU; the residency manager in `appliance.scheduler.loop` schedules the
GPU and delegates CPU models to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engines.engine import Engine


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


@dataclass
class Lease:
    model: str
    endpoint: str  # e.g. http://127.0.0.1:8001
    engine: Engine
    waited_s: float = 0.0
    info: dict[str, object] = field(default_factory=dict)


class DirectResidency:
    """No scheduling: each lease starts the model's engine if needed and activates it."""

    def __init__(self, engines: dict[str, Engine], model_engine: dict[str, str]) -> None:
        self.engines = engines
        self.model_engine = model_engine

    @contextlib.asynccontextmanager
    async def lease(self, model: str, *, deadline_s: float | None = None) -> AsyncIterator[Lease]:
        from .supervisor.process import EngineUnavailable

        eng = self.engines.get(self.model_engine.get(model, ""))
        if eng is None:
            raise ModelUnavailable(f"model {model!r} has no enabled engine")
        try:
            await eng.ensure_ready(deadline_s)
            await eng.activate()
        except EngineUnavailable as exc:
            raise ModelUnavailable(str(exc), retry_after=eng.process.machine.backoff_delay_preview()) from exc
        yield Lease(model, eng.base_url, eng)
