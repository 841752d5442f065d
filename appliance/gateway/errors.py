"""Domain errors and their one mapping to OpenAI-style error JSON:
`{"error": {"message", "type", "param", "code"}}`.

Every route raises an `ApiError` (or a subclass); the app's handler renders it, the raw /v1 path sends
`asgi_start()`/`payload()`, and a stream that already started gets `sse_event()`. Lease failures from the
residency manager map through `from_lease_error`. Nothing else in the gateway builds error bodies by
hand.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from starlette.responses import Response

from ..logsetup import REQUEST_ID
from ..residency import CannotFitError, LeaseError, ModelUnavailable, NotResident, QueueFullError


class ApiError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}

    def response(self) -> Response:
        return Response(json.dumps(self.body()), status_code=self.status, headers=self.headers(),
                        media_type="application/json")

    def payload(self) -> bytes:
        return json.dumps(self.body()).encode()

    def asgi_start(self, length: int) -> dict[str, Any]:
        """The ASGI `http.response.start` message for `payload()` of `length` bytes."""
        headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers().items()]
        return {"type": "http.response.start", "status": self.status, "headers": headers}

    def sse_event(self) -> bytes:
        """The error as a server-sent event, the way vLLM ends a failed stream (contracts.md §1.3)."""
        return b"data: " + self.payload() + b"\n\n"


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    type = "permission_error"
    code = "insufficient_permissions"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class Unavailable(ApiError):
    status = 503
    type = "server_error"
    code = "model_unavailable"


class UpstreamFailed(ApiError):
    status = 502
    type = "server_error"
    code = "engine_failed"


class UpstreamTimeout(UpstreamFailed):
    """The engine sent nothing for its `idle_timeout_s`."""

    code = "engine_timeout"


class EngineUnreachable(UpstreamFailed):
    """The engine refused the connection: the request never reached it (safe to send again)."""


class EngineError(ApiError):
    """An engine's own error answer (already an envelope), passed on with its status and body."""

    type = "engine_error"

    def __init__(self, status: int, raw: bytes) -> None:
        try:
            message = str(json.loads(raw)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = raw[:200].decode("utf-8", "replace")
        super().__init__(message, status=status)
        self.raw = raw

    def payload(self) -> bytes:
        return self.raw if self.raw.startswith(b"{") else super().payload()


class InternalError(ApiError):
    """An unexpected exception: the client gets "internal error" and a request id, never the exception's
    text; `internal_error()` logs the traceback under the same id."""

    code = "internal_error"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"internal error (request id {request_id})")
        self.request_id = request_id

    def headers(self) -> dict[str, str]:
        # The front door already sends the request's own id on every response; only an id made here
        # (outside a request) needs the header.
        return {} if REQUEST_ID.get() == self.request_id else {"X-Request-Id": self.request_id}


def internal_error(log: logging.Logger, where: str) -> InternalError:
    """Call from an `except Exception` block: log the traceback under the request's id (the one the front
    door gave it, or a fresh one outside a request), and return the error to answer with (the id is the
    link between the client's report and the log line)."""
    request_id = REQUEST_ID.get() or secrets.token_hex(8)
    log.exception("internal error on %s (request id %s)", where, request_id)
    return InternalError(request_id)


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class CannotFit(Unavailable):
    code = "cannot_fit"


class ModelNotResident(ApiError):
    """A resident-only request (a fleet router's `X-Route-Policy`) for a model not resident here:
    409 by default, or the `X-Route-Retry-Status` the router chose (503)."""

    status = 409
    type = "server_error"
    code = "model_not_resident"


def from_lease_error(exc: LeaseError) -> ApiError:
    """Map a residency failure to its HTTP error, keeping the scheduler's Retry-After."""
    if isinstance(exc, QueueFullError):
        return QueueFull(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, CannotFitError):
        return CannotFit(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, NotResident):
        return ModelNotResident(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, ModelUnavailable):
        return Unavailable(str(exc), retry_after=exc.retry_after)
    return Unavailable(str(exc), retry_after=exc.retry_after)
