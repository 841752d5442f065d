"""Scheduled upkeep of what the appliance keeps, run by apscheduler beside (never inside) the
residency core: retention of usage records, generated images, finished jobs and their files; the
fleet registry's rows of boxes dead for `fleet.forget_after_h`; the daily usage rollup; an optional
backup of the embedded store; and the passes other parts register (`add_daily`, `add_periodic`: e.g.
the TLS renewal, the removal of expired vector stores).

Each pass is a plain method (`retention`, `rollup`, `backup`) taking the time, so tests call it
directly; `start()` registers them with an AsyncIOScheduler that runs them off the event loop.
The rollup runs before the retention (the raw records of a day go only once it is rolled up).
It must not decide what a record means or touch a running request: it deletes by age only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import StoreConfig
from .protocol import Store, StoreError
from .sqlcore import day_of

log = logging.getLogger("appliance.store")
RETENTION_EVERY_S = 3600.0


def sweep_files(directory: Path, older_than: float) -> int:
    """Delete plain files in `directory` last modified before `older_than`, and folders (a job's
    upload left by a crash) made before then."""
    removed = 0
    if not directory.is_dir():
        return 0
    for path in directory.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= older_than:
                continue
            if path.is_file():
                path.unlink()
                removed += 1
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                removed += 1
    return removed


class Maintenance:
    def __init__(self, store: Store, settings: StoreConfig, *, jobs_dir: Path,
                 image_sweep: Callable[[], int] | None = None, forget_boxes_after_s: float | None = None) -> None:
        self.store = store
        self.settings = settings
        self.forget_boxes_after_s = forget_boxes_after_s  # fleet.forget_after_h; None: registry left alone
        self.jobs_dir = jobs_dir
        self.image_sweep = image_sweep
        self._scheduler: Any = None
        self._extra: dict[str, Callable[[float], object]] = {}
        self._periodic: dict[str, tuple[Callable[[float], Awaitable[object]], float]] = {}

    # -- the passes
    def rollup(self, now: float) -> int:
        """Fold every complete day (UTC) before `now` into the daily table; returns the days folded."""
        return self.store.usage_rollup(day_of(now))

    def retention(self, now: float) -> dict[str, int]:
        s = self.settings
        out = {"usage": 0, "jobs": 0, "job_files": 0, "images": 0, "boxes": 0}
        if s.usage_retention_days > 0:
            out["usage"] = self.store.usage_prune(now - s.usage_retention_days * 86400)
        out["jobs"] = self.store.jobs_prune(now - s.job_retention_h * 3600)
        out["job_files"] = sweep_files(self.jobs_dir, now - s.job_retention_h * 3600)
        if self.image_sweep is not None:
            out["images"] = self.image_sweep()
        if self.forget_boxes_after_s is not None:
            forgotten = self.store.boxes_forget(self.forget_boxes_after_s)
            if forgotten:
                log.info("fleet registry: forgot %d box(es) dead for over %g h: %s", len(forgotten),
                         self.forget_boxes_after_s / 3600, ", ".join(forgotten))
            out["boxes"] = len(forgotten)
        return out

    def backup(self, now: float) -> Path | None:
        """A backup of the embedded store into `backup_dir`, keeping the newest `backup_keep`."""
        if not self.settings.backup_dir:
            return None
        backup = getattr(self.store, "backup", None)
        if backup is None:
            log.warning("store: backup_dir is set but %s is not the embedded store; use pg_dump",
                        self.store.describe())
            return None
        directory = Path(self.settings.backup_dir).expanduser()
        dest = directory / time.strftime("appliance-%Y%m%d-%H%M%S.db", time.gmtime(now))
        backup(dest)
        kept = sorted(directory.glob("appliance-*.db"))
        for old in kept[:-self.settings.backup_keep]:
            old.unlink(missing_ok=True)
        return dest

    def daily(self, now: float) -> None:
        days = self.rollup(now)
        removed = self.retention(now)
        log.info("store: rolled up %d day(s); retention removed %s", days, removed)

    # -- the schedule
    def start(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        hour, minute = (int(p) for p in self.settings.rollup_at.split(":"))
        sched = AsyncIOScheduler(timezone="UTC")
        sched.add_job(self._off_loop(self.daily), "cron", hour=hour, minute=minute, id="rollup",
                      misfire_grace_time=3600, coalesce=True)
        sched.add_job(self._off_loop(self.retention), "interval", seconds=RETENTION_EVERY_S, id="retention",
                      coalesce=True)
        if self.settings.backup_dir:
            sched.add_job(self._off_loop(self.backup), "interval", hours=self.settings.backup_interval_h,
                          id="backup", coalesce=True)
        for job_id, step in self._extra.items():
            self._schedule_extra(sched, job_id, step)
        for job_id, (astep, every_s) in self._periodic.items():
            self._schedule_periodic(sched, job_id, astep, every_s)
        sched.start()
        self._scheduler = sched

    @staticmethod
    def _off_loop(step: Callable[[float], object]) -> Callable[[], Any]:
        async def run() -> None:
            try:
                await asyncio.to_thread(step, time.time())
            except (StoreError, OSError) as exc:
                log.warning("store maintenance (%s) failed: %s", step.__name__, exc)
        run.__name__ = step.__name__
        return run

    def add_daily(self, job_id: str, step: Callable[[float], object]) -> None:
        """Another daily upkeep pass (e.g. the TLS certificate's renewal), run off the event loop like
        the store's own, first at start; before `start` it waits for it."""
        self._extra[job_id] = step
        if self._scheduler is not None:
            self._schedule_extra(self._scheduler, job_id, step)

    def _schedule_extra(self, sched: Any, job_id: str, step: Callable[[float], object]) -> None:
        sched.add_job(self._off_loop(step), "interval", hours=24, id=job_id, coalesce=True,
                      next_run_time=datetime.now(UTC))

    def add_periodic(self, job_id: str, step: Callable[[float], Awaitable[object]], every_s: float) -> None:
        """A pass that runs on the event loop every `every_s` seconds (it does its own I/O off the loop),
        first at start; a failure is one log line and the next pass runs as planned."""
        self._periodic[job_id] = (step, every_s)
        if self._scheduler is not None:
            self._schedule_periodic(self._scheduler, job_id, step, every_s)

    @staticmethod
    def _schedule_periodic(sched: Any, job_id: str, step: Callable[[float], Awaitable[object]],
                           every_s: float) -> None:
        async def run() -> None:
            try:
                await step(time.time())
            except Exception as exc:  # the scheduler keeps running; the failure is one line
                log.warning("maintenance (%s) failed: %s: %s", job_id, type(exc).__name__, exc)
        sched.add_job(run, "interval", seconds=every_s, id=job_id, coalesce=True, next_run_time=datetime.now(UTC))

    def jobs(self) -> list[str]:
        """Ids of the scheduled passes (for /api/status and tests)."""
        return [] if self._scheduler is None else [j.id for j in self._scheduler.get_jobs()]

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
