"""Running one request's work on its model's engine, under a lease from the residency manager.

`on_engine(app, model, call, op)` takes the lease (waiting at most `server.load_deadline_s`), runs
`op(lease)`, and gives the lease back however `op` ends. Lease failures become HTTP errors
(gateway.errors.from_lease_error). If the engine refuses the connection, it died after the lease
was granted and before the supervisor noticed: nothing reached it, so the lease is given back and a
new one taken (the scheduler now waits for the restart), with a short backoff, until the deadline.
A request a fleet router sent with `X-Route-Policy: resident-only` (gateway.routing) takes a
resident-only lease: refused at once (409 `model_not_resident`, or the status the router asked
for) when the model is not resident, before anything is loaded or evicted for it.
`Call` collects what the request cost for the usage record.
It must not decide residency, nor retry anything the engine may have started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

from ..app import Appliance
from ..logsetup import ENGINE
from ..residency import Lease, LeaseError, NotResident
from ..usage import UsageRecord
from .errors import EngineUnreachable, ModelNotResident, from_lease_error
from .routing import ROUTE_POLICY

T = TypeVar("T")
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


@dataclass(slots=True)
class Call:
    """What one request cost, filled in as it goes; becomes a UsageRecord."""

    route: str
    key_id: str | None
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_exact: bool = True
    images: int = 0
    audio_s: float = 0.0
    wait_s: float = 0.0
    gpu_s: float = 0.0
    error: str | None = None
    ttft_s: float | None = None  # streams: start to the first content chunk (for the metrics)

    def record(self, status: int) -> UsageRecord:
        return UsageRecord(self.route, self.model, self.key_id, status, self.tokens_in, self.tokens_out,
                           self.tokens_exact, self.images, self.audio_s, self.gpu_s, self.wait_s,
                           time.perf_counter() - self.started, self.error)


class Leased:
    """`async with` a model's lease: maps lease failures to HTTP errors, adds up wait and hold times."""

    __slots__ = ("_call", "_cm", "_held_from", "_retry_status")

    def __init__(self, app: Appliance, model: str, call: Call, preemptible: bool = False) -> None:
        policy = ROUTE_POLICY.get()
        self._retry_status = policy.retry_status if policy is not None else 0
        self._cm = app.residency.lease(model, deadline_s=app.config.server.load_deadline_s, preemptible=preemptible,
                                       resident_only=policy is not None)
        self._call = call
        self._held_from = 0.0

    async def __aenter__(self) -> Lease:
        t0 = time.perf_counter()
        try:
            lease = await self._cm.__aenter__()
        except NotResident as exc:
            raise ModelNotResident(str(exc), status=self._retry_status or 409, retry_after=exc.retry_after) from exc
        except LeaseError as exc:
            raise from_lease_error(exc) from exc
        finally:
            self._held_from = time.perf_counter()
            self._call.wait_s += self._held_from - t0
        ENGINE.set(lease.engine.name)
        return lease

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        self._call.gpu_s += time.perf_counter() - self._held_from
        return await self._cm.__aexit__(kind, exc, tb)


async def on_engine(app: Appliance, model: str, call: Call, op: Callable[[Lease], Awaitable[T]],
                    preemptible: bool = False) -> T:
    """`preemptible`: `op` can abort and resume its work when the scheduler preempts it
    (gateway.resume); the lease then carries a `Preemption`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + app.config.server.load_deadline_s
    delay = RETRY_FIRST_S
    while True:
        async with Leased(app, model, call, preemptible) as lease:
            try:
                return await op(lease)
            except EngineUnreachable:
                if loop.time() + delay >= deadline:
                    raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)
