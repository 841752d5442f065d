"""The app factory: one FastAPI app per Appliance, routers registered here, errors mapped once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..app import Appliance
from . import admin
from .errors import ApiError, InvalidRequest, NotFound


def build_app(appliance: Appliance) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await appliance.startup()
        try:
            yield
        finally:
            await appliance.shutdown()

    app = FastAPI(title="AI Appliance", version="0.1.0", lifespan=lifespan, docs_url="/api/docs",
                  redoc_url=None, openapi_url="/api/openapi.json")
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

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return NotFound(f"no route {request.method} {request.url.path}").response()
        return ApiError(str(exc.detail), status=exc.status_code).response()

    app.include_router(admin.router)
    return app
