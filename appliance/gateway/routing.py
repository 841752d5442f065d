"""What a fleet router says about one /v1 request: `X-Route-Policy`, `X-Route-Retry-Status`, `X-Model`.

`X-Route-Policy: resident-only` asks the box to serve the request only with a model that is already
resident (the lease is refused at once, before anything is loaded or evicted for it) and to answer
409 `model_not_resident` with Retry-After otherwise, so the router can try another box.
`X-Route-Retry-Status: 503` makes that answer a 503 instead (HAProxy's `retry-on` knows 503, not
409); only 409 and 503 are accepted. `X-Model: <id>` names the model without the router reading the
body: the body's `model`, when present, must be the same.

The policy is parsed once by the front door and carried to the lease in a context variable (like
the request id): the routes need not pass it along, and work that is not an HTTP request (a queued
job) never has one. Pure parsing; it must not take leases or read bodies itself.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest

POLICY_HEADER = "X-Route-Policy"
RETRY_STATUS_HEADER = "X-Route-Retry-Status"
MODEL_HEADER = "X-Model"
POLICIES = ("resident-only",)
RETRY_STATUSES = (409, 503)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """A resident-only request, and the status to refuse it with when its model is not resident."""

    retry_status: int = 409


ROUTE_POLICY: ContextVar[RoutePolicy | None] = ContextVar("route_policy", default=None)


def parse_policy(policy: bytes | None, retry_status: bytes | None) -> RoutePolicy | None:
    """The request's policy from its headers; InvalidRequest (400) naming the header for a bad value."""
    status = 409
    if retry_status is not None:
        text = retry_status.decode("latin-1").strip()
        if text not in {str(s) for s in RETRY_STATUSES}:
            raise InvalidRequest(f"{RETRY_STATUS_HEADER} must be 409 or 503, got {text[:32]!r}",
                                 param=RETRY_STATUS_HEADER, code="invalid_header")
        status = int(text)
    if policy is None:
        return None
    value = policy.decode("latin-1").strip().lower()
    if value not in POLICIES:
        raise InvalidRequest(f"{POLICY_HEADER} must be one of {', '.join(POLICIES)}, got {value[:32]!r}",
                             param=POLICY_HEADER, code="invalid_header")
    return RoutePolicy(status)


def model_from(body_model: Any, header: bytes | None) -> Any:
    """The model a request names: `X-Model` when sent (the body's `model`, if any, must match), else
    the body's own value (checked by the route as before)."""
    if header is None:
        return body_model
    hint = header.decode("latin-1").strip()
    if not hint:
        raise InvalidRequest(f"{MODEL_HEADER} must name a model", param=MODEL_HEADER, code="invalid_header")
    if body_model is not None and body_model != hint:
        raise InvalidRequest(f"'model' is {str(body_model)[:64]!r} but the {MODEL_HEADER} header says {hint[:64]!r}",
                             param="model", code="model_mismatch")
    return hint


def apply_model_header(body: dict[str, Any], header: bytes | None) -> bool:
    """Take a JSON body's model from `X-Model` (see `model_from`); True when `model` was added to the
    body (its bytes must then be written again for the engine)."""
    if header is None:
        return False
    had = body.get("model") is not None
    body["model"] = model_from(body.get("model"), header)
    return not had
