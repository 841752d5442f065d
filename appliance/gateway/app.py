"""The app factory: one FastAPI app per Appliance, routers registered here, errors mapped once.

The /v1 data path and API authentication run in `gateway.front.Gateway`, which `ApplianceApp` calls
before FastAPI's own middleware stack (so uvicorn serves one application, and a /v1 request skips
FastAPI's per-request layers: about 20 µs of CPU measured); FastAPI keeps /health, /api/* and the docs.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..app import Appliance
from ..fleet.drain import Drain
from ..jobs.api import JobsApi
from ..jobs.runner import JobRunner
from ..jobs.submit import JOB_MODALITIES
from ..metrics import exporter_for
from ..usage import UsageSink
from ..vectors.api import RetrievalApi
from ..vectors.embedder import GatewayEmbedder
from ..vectors.service import EXPIRY_EVERY_S, Retrieval
from . import admin, docs_ui, fleet_api, keys_api, usage_api
from .auth import Authenticator, KeyCache, RateLimiter, SharedRateLimiter, is_loopback
from .errors import ApiError, InvalidRequest, NotFound, internal_error
from .front import Gateway
from .keys import KeyStore
from .metrics_api import MetricsEndpoint
from .openai import OpenAIRoutes
from .ui import StaticUi

log = logging.getLogger("appliance.gateway")

ANSWERED = "_appliance_answered"  # set on an exception unexpected_error logged and answered


class ApplianceApp(FastAPI):
    """FastAPI with the gateway's front door ahead of everything else."""

    front: Gateway | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None:
            await self.front(scope, receive, send)
        else:
            await self.fastapi(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own handling (its middleware stack and routers): the front door's fallback.
        Starlette re-raises an exception after its handler answered it (for the server to log);
        `unexpected_error` already logged it with its traceback and request id, so it stops here."""
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            if not getattr(exc, ANSWERED, False):
                raise


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Any exception a FastAPI route did not map: "internal error" and a request id (see errors.py)."""
    answer = internal_error(log, f"{request.method} {request.url.path}").response()
    setattr(exc, ANSWERED, True)
    return answer


def job_models(appliance: Appliance) -> list[str]:
    """The models this box runs jobs for: those of a job route's modality whose engine is enabled here."""
    return [mid for mid, m in appliance.config.models.items()
            if m.modality in JOB_MODALITIES and m.engine in appliance.engines]


def build_app(appliance: Appliance, usage: UsageSink | None = None) -> FastAPI:
    """The daemon's ASGI app. `usage` receives one record per finished /v1 request (default: the
    appliance's durable sink)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await appliance.startup()
        await runner.start(job_models(appliance))
        if appliance.heartbeat is not None:  # the queue runs: dead boxes' jobs can be re-announced on it
            appliance.heartbeat.sweep_with(appliance.job_queue.announce)
        await retrieval.start()
        appliance.mark_serving()
        # Everything loaded so far lives as long as the process: keep it out of the collector's full
        # passes (about 20 ms each over these objects), which would otherwise land on some request.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if appliance.heartbeat is not None:
                await appliance.heartbeat.stop_sweeping()  # before the queue closes
            await runner.close()  # a job cut off now goes back to the queue, announced for another box
            await retrieval.close()  # an attachment cut off stays in_progress, indexed again at the next start
            routes.pools.close()
            await appliance.shutdown()

    app = ApplianceApp(title="AI Appliance", version="0.1.0", lifespan=lifespan, docs_url=None,
                       redoc_url=None, openapi_url="/api/openapi.json")
    docs_ui.install(app)
    app.state.appliance = appliance

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return InvalidRequest(f"{param or 'request'}: {first.get('msg', 'invalid')}", param=param).response()

    app.add_exception_handler(Exception, unexpected_error)
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return NotFound(f"no route {request.method} {request.url.path}").response()
        return ApiError(str(exc.detail), status=exc.status_code).response()

    app.include_router(admin.router)
    app.include_router(fleet_api.router)
    app.include_router(usage_api.router)
    app.include_router(keys_api.router)

    server = appliance.config.server
    sink = usage if usage is not None else appliance.usage
    app.state.usage = sink
    limiter = RateLimiter(server.rate_limit_per_minute)
    shared = None
    if server.rate_limit_per_minute > 0 and appliance.store.backend == "postgresql":  # shared by the fleet
        shared = SharedRateLimiter(server.rate_limit_per_minute, appliance.store.count_request, limiter)
    auth = Authenticator(KeyCache(KeyStore(appliance.store)), limiter, open_when_no_keys=is_loopback(appliance.host),
                         router_token=appliance.fleet_token, shared=shared)
    app.state.key_cache = auth.keys  # keys_api refreshes it after a change, so the change holds at once
    images = appliance.images
    routes = OpenAIRoutes(appliance, sink, images)
    metrics = appliance.config.metrics
    traffic = routes.traffic
    endpoint = MetricsEndpoint(appliance, exporter_for(appliance, traffic)) if traffic is not None else None
    jobs = appliance.config.jobs
    runner = JobRunner(routes, appliance.store, appliance.job_queue, jobs_dir=appliance.state_dir / "data" / "jobs",
                       max_attempts=jobs.max_attempts, workers_per_model=jobs.workers_per_model,
                       owner=appliance.box_id)
    jobs_api = JobsApi(appliance, routes, images, appliance.store, appliance.job_queue, runner)
    retrieval = Retrieval(appliance.config, appliance.store, GatewayEmbedder(routes),
                          files_dir=appliance.state_dir / "data" / "files")
    appliance.maintenance.add_periodic("vector-store-expiry", retrieval.expire, EXPIRY_EVERY_S)
    front = Gateway(app.fastapi, routes=routes, auth=auth, images=images, metrics=endpoint,
                    metrics_open_on_loopback=metrics.open_on_loopback, jobs=jobs_api, ui=StaticUi(),
                    retrieval=RetrievalApi(retrieval, server.max_body_bytes))
    app.front = front
    app.state.drain = Drain(appliance, runner, lambda: front.in_flight)
    return app
