"""The front door: the first ASGI handler of every request, ahead of FastAPI, in the same uvicorn server.

`/v1/*` is served here on a lean path: no routing table, request object, dependency injection or
middleware stack per request (FastAPI's layers alone measured about 20 µs of CPU per request, against
about 30 µs for this whole path; bench/gateway.py measures the end-to-end cost). `/api/*` is
authenticated here and then handed to FastAPI, signed image URLs are served here, `/metrics` (and
`/metrics/engines/NAME`) is authenticated here and served by gateway.metrics_api, the web UI's static
files (`/`, `/ui/*`: public, they hold no secret) are served by gateway.ui, and everything else (`/health`,
the docs and their offline assets) goes to FastAPI untouched.

Every response carries `X-Request-Id` (the client's own when it sent a plain one, else a new one),
and the request's id and key id are set in the log context (logsetup) for every line it causes.

Authentication is decided here and only here. `/metrics` needs a valid key (any scope), except that
with `metrics.open_on_loopback` a client connecting from a loopback address needs none (a Prometheus
on the box); when the API is open (loopback bind, no key yet) it is open like the rest.
A fleet box (`fleet.enabled`) takes `/v1` only with the router's `X-Fleet-Token` or an admin key
(gateway.auth). The router's hints (`X-Route-Policy`, `X-Route-Retry-Status`: gateway.routing) are
parsed here, once (a bad value is refused with 400 naming the header), and given to the model
routes' leases. `GET /v1/residency` (any
valid key) is this box's residency summary (appliance.fleet.summary). The /v1 requests in progress
are counted (`in_flight`), for a drain's progress (appliance.fleet.drain).
An authenticated `/api` request reaches FastAPI with the caller's key in `scope[KEY_SCOPE]` (None when
the API is open), so `GET /api/whoami` tells the web UI what the key may do without a second check.
It must not hold request state between requests, nor implement the routes themselves.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..fleet.drain import DRAIN_RETRY_AFTER_S
from ..fleet.summary import residency_summary
from ..logsetup import KEY_ID, REQUEST_ID, request_id
from .auth import Authenticator, is_loopback
from .errors import ApiError, MethodNotAllowed, Unavailable
from .exchange import Exchange
from .images import ROUTE as IMAGE_ROUTE
from .images import ImageStore
from .metrics_api import MetricsEndpoint
from .openai import OpenAIRoutes
from .routing import ROUTE_POLICY, parse_policy
from .ui import StaticUi

if TYPE_CHECKING:
    from ..jobs.api import JobsApi
    from ..vectors.api import RetrievalApi

RETRIEVAL_PREFIXES = ("/v1/files", "/v1/vector_stores")
RESIDENCY_PATH = "/v1/residency"

OPEN_API_PATHS = frozenset({"/api/docs", "/api/docs/oauth2-redirect", "/api/openapi.json"})
OPEN_API_PREFIX = "/api/docs/"  # the docs page's own assets (gateway.docs_ui), public like the page
READ_ONLY_API = frozenset({"/api/status", "/api/whoami"})  # any valid key may read these; the rest needs admin
KEY_SCOPE = "appliance.key"
REQUEST_ID_HEADER = b"x-request-id"


def _with_request_id(send: Send, rid: bytes) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (REQUEST_ID_HEADER, rid)]}
        await send(message)
    return send_with_id


class Gateway:
    def __init__(self, app: ASGIApp, *, routes: OpenAIRoutes, auth: Authenticator, images: ImageStore,
                 metrics: MetricsEndpoint | None = None, metrics_open_on_loopback: bool = False,
                 jobs: JobsApi | None = None, ui: StaticUi | None = None,
                 retrieval: RetrievalApi | None = None) -> None:
        """`metrics`: None when `metrics.enabled` is false (then /metrics is a 404 like any unknown path)."""
        self.app = app
        self.jobs = jobs
        self.ui = ui
        self.retrieval = retrieval
        self.routes = routes
        self.auth = auth
        self.images = images
        self.metrics = metrics
        self.metrics_open_on_loopback = metrics_open_on_loopback
        self.in_flight = 0  # /v1 requests being served (not counting /v1/residency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        rid = request_id(next((bytes(v) for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None))
        REQUEST_ID.set(rid)
        send = _with_request_id(send, rid.encode("ascii"))
        if path.startswith("/v1/"):
            ex = Exchange(scope, receive, send)
            try:
                key = self.auth.check(ex.header(b"authorization"), admin=False, routed=True,
                                      fleet_token=ex.header(b"x-fleet-token"))
                policy = parse_policy(ex.header(b"x-route-policy"), ex.header(b"x-route-retry-status"))
                await self.auth.admit_routed(key)
            except ApiError as err:
                await ex.fail(err)
                return
            if key is not None:
                KEY_ID.set(key.id)
            if path == RESIDENCY_PATH:
                await self._residency(ex)
                return
            if ex.scope["method"] == "POST" and not self.routes.app.accepting:  # draining or stopping
                await ex.fail(Unavailable(self.routes.app.refusal(), retry_after=DRAIN_RETRY_AFTER_S))
                return
            self.in_flight += 1
            try:
                if self.jobs is not None and (path == "/v1/jobs" or path.startswith("/v1/jobs/")):
                    await self.jobs.handle(ex, key)
                elif self.retrieval is not None and path.startswith(RETRIEVAL_PREFIXES):
                    await self.retrieval.handle(ex, key)
                else:
                    # Only the model routes' own leases see the policy (not work a job or an upload
                    # starts in the background, which would inherit the context).
                    ROUTE_POLICY.set(policy)
                    await self.routes.handle(ex, key)
            finally:
                self.in_flight -= 1
            return
        if self.metrics is not None and (path == "/metrics" or path.startswith("/metrics/")):
            await self._metrics(Exchange(scope, receive, send), path)
            return
        if path.startswith("/api/") and path not in OPEN_API_PATHS and not path.startswith(OPEN_API_PREFIX):
            ex = Exchange(scope, receive, send)
            admin = not (path in READ_ONLY_API and scope["method"] in ("GET", "HEAD"))
            try:
                key = self.auth.check(ex.header(b"authorization"), admin=admin)
            except ApiError as err:
                await ex.fail(err)
                return
            if key is not None:
                KEY_ID.set(key.id)
            scope[KEY_SCOPE] = key
        elif self.ui is not None and self.ui.owns(path):
            await self.ui.serve(Exchange(scope, receive, send), path)
            return
        elif path.startswith(IMAGE_ROUTE):
            await self._image(Exchange(scope, receive, send), path[len(IMAGE_ROUTE):])
            return
        await self.app(scope, receive, send)

    async def _residency(self, ex: Exchange) -> None:
        if ex.scope["method"] not in ("GET", "HEAD"):
            await ex.fail(MethodNotAllowed(f"{RESIDENCY_PATH} is read with GET"))
            return
        await ex.respond(200, json.dumps(residency_summary(self.routes.app)).encode())

    async def _metrics(self, ex: Exchange, path: str) -> None:
        assert self.metrics is not None
        try:
            client = ex.scope.get("client")
            if not (self.metrics_open_on_loopback and client and is_loopback(str(client[0]))):
                key = self.auth.check(ex.header(b"authorization"), admin=False)
                if key is not None:
                    KEY_ID.set(key.id)
            await self.metrics.serve(ex, path)
        except ApiError as err:
            await ex.fail(err)

    async def _image(self, ex: Exchange, name: str) -> None:
        try:
            if ex.scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed("images are read with GET")
            data, ctype, left = self.images.load(name, ex.scope.get("query_string", b"").decode("latin-1"))
        except ApiError as err:
            await ex.fail(err)
            return
        await ex.respond(200, data, ctype.encode(), [(b"cache-control", b"private, max-age=%d" % left)])
