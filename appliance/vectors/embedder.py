"""Embedding chunks and queries through the gateway's own `/v1/embeddings` handler.

The request is built in-process and handed to `OpenAIRoutes.handle`, exactly as a job runner does: it
waits for the embedding model's residency lease like any client request, shows in the scheduler's queue,
and is metered under the caller's key. Over-long chunks are cut by the worker (`truncate`).
It must not touch residency or engines itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

from ..gateway.exchange import Exchange
from ..gateway.keys import ApiKey
from ..gateway.openai import OpenAIRoutes

ROUTE = "/v1/embeddings"


class EmbeddingFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Reply:
    def __init__(self) -> None:
        self.status = 0
        self.body = bytearray()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


class GatewayEmbedder:
    def __init__(self, routes: OpenAIRoutes) -> None:
        self.routes = routes

    async def embed(self, model: str, texts: list[str], key: ApiKey | None) -> list[list[float]]:
        body = json.dumps({"model": model, "input": texts, "encoding_format": "float", "truncate": True}).encode()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Future()  # nobody disconnects from an in-process call
            raise AssertionError("unreachable")

        scope = {"type": "http", "method": "POST", "path": ROUTE, "raw_path": ROUTE.encode(), "query_string": b"",
                 "scheme": "http", "server": None, "client": None,
                 "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                             (b"content-length", b"%d" % len(body))]}
        reply = _Reply()
        await self.routes.handle(Exchange(scope, receive, reply.send), key)
        try:
            doc = json.loads(reply.body)
        except ValueError:
            doc = {}
        if reply.status != 200:
            err = doc.get("error") if isinstance(doc, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            raise EmbeddingFailed(reply.status or 502, f"embedding model {model!r}: {message or 'no answer'}")
        items = sorted(doc["data"], key=lambda d: d["index"])
        return [list(map(float, d["embedding"])) for d in items]
