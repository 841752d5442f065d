"""This box's job workers: each takes the next job of its model from the queue, runs it through the
gateway's own handler for its route (so it waits for the same residency lease, appears in the
scheduler's queue and is metered like any request), and settles the attempt in the store.

An answer of 200 is the result (JSON kept as is; audio written to `<state>/data/jobs/<id>.<ext>`).
A 5xx, a 429 or a dropped response (an engine crash, a model that could not load) is retried until
`jobs.max_attempts`, keeping the error; another 4xx fails the job at once. A settle names the attempt
it ran, so a stale attempt (re-queued after a restart, cancelled meanwhile) reports nothing.
`stop_taking()` (a drain) makes the queue claim nothing more; the attempts running finish and
settle (`running` counts them). `close()` (the daemon stops) cancels the attempts still running and
puts their jobs back in the queue, announced, so another box can take them at once; after a crash
they are re-queued at the box's next start, or in a fleet by a live box once this box's registry
row expires (appliance.fleet.heartbeat).
It must not choose which box runs a job (the queue's claim does) nor touch residency itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..gateway.exchange import Exchange
from ..gateway.keys import ApiKey
from ..gateway.openai import OpenAIRoutes
from ..store import Job, Store
from .queue import JobQueue

log = logging.getLogger("appliance.jobs")
CLOSE_DEADLINE_S = 10.0  # re-queueing and announcing the attempts a stop cut off, each step at most
AUDIO_EXT = {"audio/mpeg": "mp3", "audio/wav": "wav", "audio/x-wav": "wav", "audio/opus": "opus",
             "audio/ogg": "ogg", "audio/aac": "aac", "audio/flac": "flac", "audio/pcm": "pcm", "audio/L16": "pcm"}


class _Captured:
    """The response a route handler sends, collected instead of sent to a socket."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = {bytes(k).lower(): bytes(v) for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    @property
    def content_type(self) -> str:
        return self.headers.get(b"content-type", b"application/json").decode("latin-1").split(";")[0].strip()


def _scope(job: Job, body: bytes) -> dict[str, Any]:
    base = urlsplit(job.base_url)
    return {"type": "http", "method": "POST", "path": job.route, "raw_path": job.route.encode(),
            "query_string": b"", "scheme": base.scheme or "http", "server": None, "client": None,
            "headers": [(b"host", (base.netloc or "127.0.0.1").encode()), (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body))]}


class JobRunner:
    def __init__(self, routes: OpenAIRoutes, store: Store, queue: JobQueue, *, jobs_dir: Path,
                 max_attempts: int, workers_per_model: int, owner: str) -> None:
        self.routes = routes
        self.store = store
        self.queue = queue
        self.jobs_dir = jobs_dir
        self.max_attempts = max_attempts
        self.workers_per_model = workers_per_model
        self.owner = owner
        self.models: list[str] = []
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, tuple[asyncio.Task[None], Exchange]] = {}

    async def start(self, models: list[str]) -> None:
        """Re-queue what this box was running when it stopped, then start the workers."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.models = models
        await self.queue.start(models)
        for job in await asyncio.to_thread(self.store.jobs_requeue, self.owner):
            log.warning("job %s (%s): re-queued, it was running when the daemon stopped", job.id, job.model)
            await self.queue.announce(job)
        for model in models:
            for _ in range(self.workers_per_model):
                self._workers.append(asyncio.ensure_future(self._work(model)))

    async def _work(self, model: str) -> None:
        while True:
            try:
                job = await self.queue.take(model)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a queue that failed once (broker away) tries again
                log.warning("jobs %s: cannot take the next job: %s", model, exc)
                await asyncio.sleep(1.0)
                continue
            task = asyncio.ensure_future(self._run(job))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # the daemon is stopping: the attempt stays running, re-queued at start
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                raise

    @property
    def running(self) -> int:
        """Attempts running on this box now."""
        return len(self._running)

    async def stop_taking(self) -> None:
        """Take no more jobs (a drain); what runs finishes, what is queued is left to the other boxes."""
        await self.queue.stop_taking()

    async def _run(self, job: Job) -> None:
        body = job.body.encode()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Future()  # a job's "client" never goes away; only a cancel ends this
            raise AssertionError("unreachable")

        captured = _Captured()
        ex = Exchange(_scope(job, body), receive, captured.send)
        key = ApiKey(job.key_id, "", False, 0.0, None) if job.key_id != "-" else None
        task = asyncio.current_task()
        assert task is not None
        self._running[job.id] = (task, ex)
        error: str | None = None
        try:
            await self.routes.handle(ex, key)
        except asyncio.CancelledError:
            if not ex.disconnected:
                raise
            return  # cancelled by DELETE: the store already says so
        except Exception as exc:  # the response could not be completed (ResponseAborted): a failed attempt
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._running.pop(job.id, None)
        if ex.disconnected:
            return
        await self._settle(job, captured, error)

    async def _settle(self, job: Job, captured: _Captured, error: str | None) -> None:
        status = captured.status
        if error is None and status == 200:
            result = await asyncio.to_thread(self._result, job, captured)
            if not await asyncio.to_thread(self.store.job_finish, job, result):
                log.info("job %s: finished after it was cancelled or re-queued; result dropped", job.id)
            return
        if error is None:
            error = f"{status}: {_message(captured.body)}"
        retry = (status == 0 or status >= 500 or status == 429) and job.attempts < self.max_attempts
        if await asyncio.to_thread(self.store.job_fail, job, error, retry):
            log.warning("job %s attempt %d/%d failed (%s)%s", job.id, job.attempts, self.max_attempts, error,
                        "; retrying" if retry else "")
            if retry:
                await self.queue.announce(job)

    def _result(self, job: Job, captured: _Captured) -> str:
        ctype = captured.content_type
        if ctype == "application/json":
            return json.dumps({"status": 200, "content_type": ctype, "body": json.loads(captured.body)})
        name = f"{job.id}.{AUDIO_EXT.get(ctype, 'bin')}"
        path = self.jobs_dir / name
        tmp = path.with_suffix(".partial")
        tmp.write_bytes(captured.body)
        tmp.replace(path)
        return json.dumps({"status": 200, "content_type": ctype, "file": name, "bytes": len(captured.body)})

    def cancel_local(self, job_id: str) -> bool:
        """Stop the attempt of `job_id` running here, if any (after the store marked it cancelled)."""
        running = self._running.get(job_id)
        if running is None:
            return False
        task, ex = running
        ex.disconnected = True  # the handler then unwinds like a client that left, and releases its lease
        task.cancel("job cancelled")
        return True

    async def close(self) -> None:
        cut_off = bool(self._running)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        if cut_off:
            await self._requeue_cut_off()
        await self.queue.close()

    async def _requeue_cut_off(self) -> None:
        """The attempts this stop cut off go back to the queue now, announced while the queue still runs, so
        another box can take them at once; what a failure here leaves running is re-queued at the next start."""
        try:
            jobs = await asyncio.wait_for(asyncio.to_thread(self.store.jobs_requeue, self.owner), CLOSE_DEADLINE_S)
            for job in jobs:
                log.warning("job %s (%s): re-queued, the daemon stopped while it ran", job.id, job.model)
                await asyncio.wait_for(self.queue.announce(job), CLOSE_DEADLINE_S)
        except Exception as exc:
            log.warning("jobs: the attempts cut off by the stop are re-queued at the next start (%s: %s)",
                        type(exc).__name__, exc)


def _message(body: bytes | bytearray) -> str:
    try:
        err = json.loads(body)["error"]
        return str(err.get("message") or err)
    except (ValueError, KeyError, TypeError, AttributeError):
        return bytes(body[:200]).decode("utf-8", "replace") or "no answer"
