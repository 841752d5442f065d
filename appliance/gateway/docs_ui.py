"""`/api/docs` offline: the Swagger UI page with its script and stylesheet served from the static files
of the installed `fastapi-offline` package (Swagger UI 5, which reads OpenAPI 3.1 as FastAPI writes
it; only its files are used) at `/api/docs/assets/...`, never from a CDN, and the OpenAPI schema at
`/api/openapi.json` completed with the `/v1` routes (gateway.openapi_v1), which the front door serves
outside FastAPI's routing table.

It must not serve any file outside the bundle's folder, nor describe a route that does not exist.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response

from .errors import NotFound
from .openapi_v1 import v1_openapi

ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}


def bundle_dir() -> Path | None:
    """The installed Swagger UI files, or None when the package is missing (then the docs page says so)."""
    try:
        folder = Path(str(importlib.resources.files("fastapi_offline"))) / "static"
    except ModuleNotFoundError:
        return None
    return folder if all((folder / name).is_file() for name in ASSETS) else None


def install(app: FastAPI, openapi_url: str = "/api/openapi.json") -> None:
    """Register `/api/docs`, its assets, and the /v1-aware schema on `app` (built with docs_url=None)."""
    folder = bundle_dir()
    assets = {name: (folder / name).read_bytes() for name in ASSETS} if folder is not None else {}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            extra = v1_openapi()
            schema["paths"] = {**extra["paths"], **schema.get("paths", {})}
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(extra["schemas"])
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/api/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if not assets:
            return HTMLResponse("<h1>API reference</h1><p>The fastapi-offline package is not installed; "
                                f"the schema is at <a href='{openapi_url}'>{openapi_url}</a>.</p>")
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title}: API reference",
                                   swagger_js_url="/api/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/api/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/api/docs/assets/favicon.png")

    @app.get("/api/docs/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        body = assets.get(name)
        if body is None:
            raise NotFound(f"no docs asset {name!r}", param="name")
        return Response(body, media_type=TYPES[Path(name).suffix], headers={"cache-control": "max-age=86400"})
