"""OpenAI-style errors of every worker: the envelope `{"error": {"message", "type", "param", "code"}}`.

Owns `OpenAIError` and its rendering, the same envelope the gateway sends: `type` and a string `code`
(or null) by status, as OpenAI does, so a worker's error relayed through the gateway reads like the
gateway's own. Request-field rules are not here: they live in `appliance.fields`, shared with the
gateway, and their `FieldError` becomes a 400 through `from_field_error`. Must not know any modality or
touch the network.
"""

from __future__ import annotations

from typing import Any

from appliance.fields import FieldError

# (type, code) by HTTP status, as the gateway's errors (appliance/gateway/errors.py) render them.
_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_permissions"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    499: ("invalid_request_error", "request_cancelled"),  # cancelled through /cancel: nobody reads it
    500: ("server_error", "internal_error"),
    503: ("server_error", "model_unavailable"),
}


class OpenAIError(Exception):
    """An error that maps to one HTTP response with the OpenAI envelope."""

    def __init__(self, status: int, message: str, param: str | None = None, err_type: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        default_type, default_code = _KINDS.get(status, ("server_error", None))
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or default_type
        self.code = code or default_code

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": self.code}}


def bad_request(param: str, message: str, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def from_field_error(exc: FieldError) -> OpenAIError:
    return OpenAIError(400, exc.message, param=exc.field, code=exc.code)
