"""Draining this box (`POST /api/drain`): stop taking new work, let what runs finish, then allow shutdown.

Owns: the order of a drain and its progress report. Starting it makes the Appliance's readiness
"draining" (so `/health/ready` answers 503 and the router sends new requests elsewhere), which is
the same switch the daemon's shutdown uses to refuse new /v1 work and job submissions (503 with
Retry-After), and makes the job runner claim no more jobs (with Kafka, the consumer leaves the group
so another box gets them). Requests and job attempts already running finish; `progress()` counts
them, and `drained` is true once both are zero: the daemon may then be stopped without losing any.
It must not stop the daemon itself (the operator or the router's rolling upgrade does), nor cancel
anything in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Appliance
    from ..jobs.runner import JobRunner

DRAIN_RETRY_AFTER_S = 5.0
"""Retry-After on the 503s of a draining box: the router retries elsewhere at once, a client soon."""


class Drain:
    def __init__(self, appliance: Appliance, runner: JobRunner, requests_in_flight: Callable[[], int]) -> None:
        """`requests_in_flight`: the /v1 requests being served now (the front door counts them)."""
        self.appliance = appliance
        self.runner = runner
        self.requests_in_flight = requests_in_flight
        self.started_at: float | None = None

    async def start(self) -> dict[str, Any]:
        """Begin draining (again: nothing changes); the progress report."""
        if self.appliance.drain():
            self.started_at = time.time()
            await self.runner.stop_taking()
        return self.progress()

    def progress(self) -> dict[str, Any]:
        requests, jobs = self.requests_in_flight(), self.runner.running
        draining = self.started_at is not None
        return {
            "state": self.appliance.readiness,
            "draining": draining,
            "since": self.started_at,
            "in_flight": {"requests": requests, "jobs": jobs},
            "drained": draining and requests == 0 and jobs == 0,
        }
