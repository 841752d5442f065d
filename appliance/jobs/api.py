"""`/v1/jobs`: submit a job, read its state, position and result, cancel it, fetch its audio.

On /v1 because a job is an API call made with an ordinary key (gateway.front authenticates every
/v1 request with the caller's key; /api is for admin keys): a job is visible to the key that
submitted it and to admin keys, and is 404 to anyone else.
- `POST /v1/jobs`: the synchronous route's body plus `"route"`; 202 with the job at once, or 200 with
  the existing job when the `Idempotency-Key` was seen before with the same body (409 with another).
- `GET /v1/jobs/{id}`: state, position in its model's queue, attempts, last error, and when succeeded
  the result: the route's answer (image URLs signed afresh for `server.image_url_ttl_s`), or for
  speech `{"url": ".../v1/jobs/{id}/content", "content_type", "bytes"}`.
- `DELETE /v1/jobs/{id}`: cancels a queued or running job (409 once finished).
- `GET /v1/jobs/{id}/content`: the audio file of a finished speech job.
It must not run jobs (runner) nor check the route bodies itself (submit).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..app import Appliance
from ..fleet.drain import DRAIN_RETRY_AFTER_S
from ..gateway.errors import ApiError, MethodNotAllowed, NotFound
from ..gateway.exchange import Exchange
from ..gateway.images import ImageStore
from ..gateway.keys import ApiKey
from ..gateway.openai import OpenAIRoutes
from ..store import Job, JobState, Store
from . import submit
from .queue import JobQueue
from .runner import JobRunner

log = logging.getLogger("appliance.jobs")
PREFIX = "/v1/jobs"


class JobConflict(ApiError):
    status = 409


class JobsApi:
    def __init__(self, appliance: Appliance, routes: OpenAIRoutes, images: ImageStore, store: Store,
                 queue: JobQueue, runner: JobRunner) -> None:
        self.appliance = appliance
        self.routes = routes
        self.images = images
        self.store = store
        self.queue = queue
        self.runner = runner

    async def handle(self, ex: Exchange, key: ApiKey | None) -> None:
        try:
            await self._dispatch(ex, key)
        except ApiError as err:
            await ex.fail(err)

    async def _dispatch(self, ex: Exchange, key: ApiKey | None) -> None:
        method: str = ex.scope["method"]
        rest = ex.scope["path"][len(PREFIX):].strip("/")
        if not rest:
            if method != "POST":
                raise MethodNotAllowed(f"{PREFIX} accepts POST, not {method}")
            return await self._submit(ex, key)
        job_id, _, tail = rest.partition("/")
        job = await self._visible(job_id, key)
        if tail == "content" and method in ("GET", "HEAD"):
            return await self._content(ex, job)
        if tail:
            raise NotFound(f"no route {method} {ex.scope['path']}")
        if method in ("GET", "HEAD"):
            return await ex.respond(200, await self._view(job, ex))
        if method == "DELETE":
            return await self._cancel(ex, job)
        raise MethodNotAllowed(f"{PREFIX}/{{id}} accepts GET and DELETE, not {method}")

    async def _submit(self, ex: Exchange, key: ApiKey | None) -> None:
        if not self.appliance.accepting:
            raise ApiError(self.appliance.refusal(), status=503, retry_after=DRAIN_RETRY_AFTER_S)
        raw = await ex.read_body(self.appliance.config.server.max_body_bytes)
        request = submit.check(raw, ex.header(b"idempotency-key"), self.appliance.config, self.routes,
                               set(self.appliance.engines), model_header=ex.header(b"x-model"))
        new = request.new_job(key.id if key is not None else "-", OpenAIRoutes.base_url(ex))
        job, created = await self.store.ajob_create(new)
        if not created and job.body_hash != new.body_hash:
            raise JobConflict(f"Idempotency-Key {request.idempotency_key!r} was used for a different request "
                              f"(job {job.id})", param="Idempotency-Key", code="idempotency_key_reused")
        if created:
            try:
                await self.queue.announce(job)
            except Exception as exc:  # the row is committed: the job is durable and announced at the next start
                log.warning("job %s: queued but not announced (%s: %s)", job.id, type(exc).__name__, exc)
        extra = [] if created else [(b"idempotent-replayed", b"true")]
        await ex.respond(202 if created else 200, await self._view(job, ex), extra=extra)

    async def _visible(self, job_id: str, key: ApiKey | None) -> Job:
        job = await asyncio.to_thread(self.store.job_get, job_id) if job_id else None
        owner = key.id if key is not None else "-"
        if job is None or not (job.key_id == owner or (key is not None and key.admin)):
            raise NotFound(f"no job {job_id!r}", param="id", code="job_not_found")
        return job

    async def _cancel(self, ex: Exchange, job: Job) -> None:
        if job.state.finished:
            raise JobConflict(f"job {job.id} already {job.state.value}", code="job_finished")
        now = await asyncio.to_thread(self.store.job_cancel, job.id)
        if now is None:
            raise NotFound(f"no job {job.id!r}", param="id", code="job_not_found")
        if now.state is not JobState.CANCELLED:
            raise JobConflict(f"job {job.id} already {now.state.value}", code="job_finished")
        self.runner.cancel_local(job.id)
        await ex.respond(200, await self._view(now, ex))

    async def _content(self, ex: Exchange, job: Job) -> None:
        result = json.loads(job.result) if job.result and job.state is JobState.SUCCEEDED else {}
        name = result.get("file")
        if not name:
            raise NotFound(f"job {job.id} has no file to fetch (state {job.state.value})", code="no_content")
        try:
            data = await asyncio.to_thread((self.runner.jobs_dir / name).read_bytes)
        except FileNotFoundError:
            raise NotFound(f"the file of job {job.id} is no longer kept (store.job_retention_h)") from None
        await ex.respond(200, data, result["content_type"].encode())

    async def _view(self, job: Job, ex: Exchange) -> bytes:
        base = OpenAIRoutes.base_url(ex)
        view: dict[str, Any] = {
            "id": job.id, "object": "job", "route": job.route, "model": job.model, "status": job.state.value,
            "attempts": job.attempts, "max_attempts": self.runner.max_attempts,
            "created_at": job.created, "started_at": job.started, "finished_at": job.finished,
            "error": job.error, "result": None,
        }
        if job.state is JobState.QUEUED:
            view["position"] = await asyncio.to_thread(self.store.job_position, job)
        if job.state is JobState.SUCCEEDED and job.result:
            view["result"] = self._result(job, json.loads(job.result), base)
        return json.dumps(view).encode()

    def _result(self, job: Job, result: dict[str, Any], base: str) -> Any:
        if "file" in result:
            return {"url": f"{base}{PREFIX}/{job.id}/content", "content_type": result["content_type"],
                    "bytes": result["bytes"]}
        body = result.get("body")
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            for item in body["data"]:
                name = ImageStore.name_of(item.get("url", "")) if isinstance(item, dict) else None
                if name is not None:
                    item["url"] = self.images.sign(name, base)
        return body
