"""A job request checked before it is queued: the route, the body the synchronous route takes, the
model (it must exist, match the route and have an enabled engine), and the Idempotency-Key.

Everything a job could fail on for its input is refused here with a 4xx naming the field, so a
queued job only fails for reasons of the engines.
It must not write anything: `api` creates the row from what this returns.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..gateway import routing, validation
from ..gateway.errors import ApiError, InvalidRequest
from ..gateway.openai import IMAGE_ALIASES, SPEECH_ALIASES, OpenAIRoutes
from ..store import NewJob

# route -> (modality, OpenAI's default model names, the synchronous route's own check)
JOB_ROUTES: dict[str, tuple[str, tuple[str, ...], Callable[[dict[str, Any]], object]]] = {
    "/v1/images/generations": ("image", IMAGE_ALIASES, validation.check_image),
    "/v1/audio/speech": ("speech", SPEECH_ALIASES, validation.check_speech),
    "/v1/chat/completions": ("text", (), validation.check_chat),
}
MAX_IDEMPOTENCY_KEY = 255


class IdempotencyConflict(ApiError):
    status = 409


class ModelCannotRun(ApiError):
    status = 422


@dataclass(frozen=True)
class JobRequest:
    route: str
    model: str
    body: dict[str, Any]
    idempotency_key: str | None

    @property
    def body_hash(self) -> str:
        text = json.dumps({"route": self.route, "body": self.body}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def new_job(self, key_id: str, base_url: str) -> NewJob:
        return NewJob(f"job_{secrets.token_hex(12)}", self.route, self.model, key_id, self.idempotency_key,
                      self.body_hash, json.dumps(self.body), base_url)


def check(raw: bytes, idempotency_key: bytes | None, config: Config, routes: OpenAIRoutes,
          enabled_engines: set[str], model_header: bytes | None = None) -> JobRequest:
    """The job a POST /v1/jobs body asks for, or an ApiError (400, 404, 422) naming the field.
    `model_header`: the request's X-Model (gateway.routing), the job's model when sent."""
    body = validation.parse_body(raw)
    routing.apply_model_header(body, model_header)
    route = body.pop("route", None)
    if not isinstance(route, str) or route not in JOB_ROUTES:
        raise InvalidRequest(f"'route' must be one of {', '.join(JOB_ROUTES)}, got {route!r}", param="route")
    modality, aliases, route_check = JOB_ROUTES[route]
    name = routes.model_for(validation.model_name(body, required=bool(not aliases)), modality, route, aliases)
    if name != body.get("model"):
        body["model"] = name
    route_check(body)
    if body.get("stream"):
        raise InvalidRequest("'stream' must be false for a job: its answer is kept whole", param="stream")
    engine = config.models[name].engine
    if engine not in enabled_engines:
        raise ModelCannotRun(f"model {name!r} cannot run on this appliance: its engine {engine!r} is disabled",
                             param="model", code="model_cannot_run")
    key: str | None = None
    if idempotency_key is not None:
        key = idempotency_key.decode("latin-1").strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters",
                                 param="Idempotency-Key")
    return JobRequest(route, name, body, key)
