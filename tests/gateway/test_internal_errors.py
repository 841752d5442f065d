"""Regression (issue 13 item 2): an unexpected exception answered HTTP 500 carrying its own text
(`ControlError: text: POST /load failed: ClientConnectorError …`). Now the client gets "internal
error" and a request id, and the same id is in the log line with the traceback."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from appliance.gateway.app import ApplianceApp, unexpected_error
from appliance.gateway.errors import InternalError, internal_error
from appliance.gateway.exchange import Exchange
from appliance.gateway.openai import OpenAIRoutes
from appliance.usage import MemoryUsageSink

SECRET = "ControlError: text: POST /load failed: ClientConnectorError(secret detail)"


def _request_id(message: str) -> str:
    assert message.startswith("internal error (request id "), message
    rid = message.split("request id ")[1].rstrip(")")
    assert len(rid) >= 8, message
    return rid


async def test_v1_unexpected_exception_says_internal_error_with_a_logged_request_id(
        caplog: pytest.LogCaptureFixture) -> None:
    routes = OpenAIRoutes.__new__(OpenAIRoutes)  # only handle() runs: it needs the usage sink
    routes.usage = MemoryUsageSink()
    routes.traffic = None  # metrics off: nothing else is needed

    async def boom(ex: Exchange, call: Any, path: str) -> None:
        raise RuntimeError(SECRET)

    routes._dispatch = boom  # type: ignore[method-assign]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}
    with caplog.at_level(logging.ERROR, logger="appliance.gateway"):
        await routes.handle(Exchange(scope, receive, send), None)
    start, body = sent[0], json.loads(sent[1]["body"])
    assert start["status"] == 500
    error = body["error"]
    assert "secret" not in json.dumps(body) and "ControlError" not in json.dumps(body)
    assert error["code"] == "internal_error" and error["type"] == "server_error"
    rid = _request_id(error["message"])
    assert (b"x-request-id", rid.encode()) in start["headers"]
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert logged and logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])


def test_api_route_unexpected_exception_is_an_internal_error_envelope(caplog: pytest.LogCaptureFixture) -> None:
    app = ApplianceApp()
    router = APIRouter()

    @router.get("/api/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET)

    app.include_router(router)
    app.add_exception_handler(Exception, unexpected_error)  # as build_app registers it

    with caplog.at_level(logging.ERROR):
        resp = TestClient(app).get("/api/boom")  # nothing re-raised to the server: answered and logged once
    assert resp.status_code == 500 and "secret" not in resp.text
    rid = _request_id(resp.json()["error"]["message"])
    assert resp.headers["x-request-id"] == rid
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1 and rid in tracebacks[0].getMessage()


def test_internal_error_ids_differ() -> None:
    log = logging.getLogger("test")
    try:
        raise ValueError("x")
    except ValueError:
        a, b = internal_error(log, "a"), internal_error(log, "b")
    assert isinstance(a, InternalError) and a.request_id != b.request_id
