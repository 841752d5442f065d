"""Model downloads the daemon runs for the web UI and the API, with progress published as events.

Owns the running and finished downloads: one background thread per model (huggingface_hub's
transfers are blocking), at most one per model at a time. Every `PullEvent` of `appliance.pull`
becomes a bus event `download.<kind>` (resolving, planned, file, progress, verified, skipped,
done, failed), published from the event loop; `progress` comes once per block, so at most one every
`PROGRESS_EVERY_S` is published (a large pull would otherwise fill the bus's replayed history and push
the residency timeline out of it; the job's bytes stay exact at /api/downloads). The licence gate runs
before anything starts, so a refused licence is an immediate error, not a failed download.

It must not decide where models live beyond `<state_dir>/models` (the CLI's store), nor read the
environment (the hub endpoint and token are given by the caller).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .events import Event, EventBus
from .pull import PullError, PullEvent, licence_gate, pull_model

PROGRESS_EVERY_S = 0.5


class ProgressThrottle:
    """Says which events to publish: every one but `progress`, and `progress` at most once per interval."""

    def __init__(self, every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last: float | None = None

    def admit(self, kind: str) -> bool:
        if kind != "progress":
            return True
        now = self._clock()
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        return True


class DownloadBusy(Exception):
    """The model is already being downloaded."""


@dataclass
class Download:
    model: str
    started: float = field(default_factory=time.time)
    state: str = "running"  # running | done | failed
    done_bytes: int = 0
    total_bytes: int = 0
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "state": self.state, "started": self.started, "done_bytes": self.done_bytes,
                "total_bytes": self.total_bytes, "message": self.message}


class Downloads:
    def __init__(self, catalog: Catalog, models_dir: Path, bus: EventBus, accepted: set[str],
                 endpoint: str | None = None, token: str | None = None) -> None:
        self.catalog = catalog
        self.models_dir = models_dir
        self.bus = bus
        self.accepted = accepted
        self.endpoint = endpoint
        self.token = token
        self._jobs: dict[str, Download] = {}
        self._lock = threading.Lock()

    def start(self, model_id: str, accept_licence: bool = False) -> Download:
        """Begin downloading a catalog model; raises UnknownModel, LicenceRequired or DownloadBusy."""
        model = self.catalog.get(model_id)
        accepted: bool | set[str] = True if accept_licence else self.accepted
        licence_gate(model, accepted)
        loop = asyncio.get_running_loop()
        with self._lock:
            current = self._jobs.get(model.id)
            if current is not None and current.state == "running":
                raise DownloadBusy(f"{model.id} is already being downloaded")
            job = Download(model.id)
            self._jobs[model.id] = job

        throttle = ProgressThrottle()

        def publish(ev: PullEvent) -> None:
            job.done_bytes, job.total_bytes = ev.done_bytes, ev.total_bytes or job.total_bytes
            if throttle.admit(ev.kind):
                loop.call_soon_threadsafe(self.bus.publish, Event(f"download.{ev.kind}", ev.model, ev.as_dict()))

        def run() -> None:
            try:
                pull_model(model, self.models_dir, accepted=accepted, endpoint=self.endpoint, token=self.token,
                           on_progress=publish)
            except PullError as exc:
                job.state, job.message = "failed", str(exc)  # pull_model has published download.failed
            except Exception as exc:  # an unexpected failure still ends the download, visibly
                job.state, job.message = "failed", f"{type(exc).__name__}: {exc}"
                loop.call_soon_threadsafe(self.bus.publish, Event("download.failed", model.id,
                                                                  {"message": job.message}))
            else:
                job.state = "done"

        threading.Thread(target=run, name=f"pull-{model.id}", daemon=True).start()
        return job

    def status(self) -> list[dict[str, Any]]:
        return [j.as_dict() for j in self._jobs.values()]
