"""A stand-in for the daemon's GET /api/status (only the "models" field `appliance models` reads).

Usage: python status_standin.py --port P --status STATUS.json [--api-key KEY]
With --api-key, requests without `Authorization: Bearer KEY` get 401, as the gateway answers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--api-key", default="")
    ns = parser.parse_args()
    status = json.loads(ns.status.read_text())

    async def handler(request: web.Request) -> web.Response:
        if ns.api_key and request.headers.get("Authorization") != f"Bearer {ns.api_key}":
            return web.json_response({"error": {"message": "missing or bad API key"}}, status=401)
        return web.json_response(status)

    app = web.Application()
    app.router.add_get("/api/status", handler)
    web.run_app(app, host="127.0.0.1", port=ns.port, print=None)


if __name__ == "__main__":
    main()
