"""The front door: the first ASGI handler of every request, ahead of FastAPI, in the same uvicorn server.

`/v1/*` is served here on a lean path: no routing table, request object, dependency injection or
middleware stack per request (FastAPI's layers alone measured about 20 µs of CPU per request, against
about 30 µs for this whole path; bench/gateway.py measures the end-to-end cost). `/api/*` is
authenticated here and then handed to FastAPI, signed image URLs are served here, and everything else
(`/health`, the docs) goes to FastAPI untouched.
It must not hold request state between requests, nor implement the routes themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import Authenticator
from .errors import ApiError, MethodNotAllowed
from .exchange import Exchange
from .images import ROUTE as IMAGE_ROUTE
from .images import ImageStore
from .openai import OpenAIRoutes

if TYPE_CHECKING:
    from ..jobs.api import JobsApi

OPEN_API_PATHS = frozenset({"/api/docs", "/api/docs/oauth2-redirect", "/api/openapi.json"})
READ_ONLY_API = frozenset({"/api/status"})  # any valid key may read these; the rest of /api needs admin


class Gateway:
    def __init__(self, app: ASGIApp, *, routes: OpenAIRoutes, auth: Authenticator, images: ImageStore,
                 jobs: JobsApi | None = None) -> None:
        self.app = app
        self.jobs = jobs
        self.routes = routes
        self.auth = auth
        self.images = images

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/v1/"):
            ex = Exchange(scope, receive, send)
            try:
                key = self.auth.check(ex.header(b"authorization"), admin=False)
            except ApiError as err:
                await ex.fail(err)
                return
            if self.jobs is not None and (path == "/v1/jobs" or path.startswith("/v1/jobs/")):
                await self.jobs.handle(ex, key)
                return
            await self.routes.handle(ex, key)
            return
        if path.startswith("/api/") and path not in OPEN_API_PATHS:
            ex = Exchange(scope, receive, send)
            admin = not (path in READ_ONLY_API and scope["method"] in ("GET", "HEAD"))
            try:
                self.auth.check(ex.header(b"authorization"), admin=admin)
            except ApiError as err:
                await ex.fail(err)
                return
        elif path.startswith(IMAGE_ROUTE):
            await self._image(Exchange(scope, receive, send), path[len(IMAGE_ROUTE):])
            return
        await self.app(scope, receive, send)

    async def _image(self, ex: Exchange, name: str) -> None:
        try:
            if ex.scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed("images are read with GET")
            data, ctype, left = self.images.load(name, ex.scope.get("query_string", b"").decode("latin-1"))
        except ApiError as err:
            await ex.fail(err)
            return
        await ex.respond(200, data, ctype.encode(), [(b"cache-control", b"private, max-age=%d" % left)])
