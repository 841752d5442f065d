"""OpenAI-style errors and request-field validation shared by every worker.

Owns the error envelope `{"error": {"message", "type", "param", "code"}}` (code is the HTTP status as
an int, as vLLM does; contracts.md §1.3) and small validators that raise a 400 naming the offending
field. Must not know any modality or touch the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
}


class OpenAIError(Exception):
    """An error that maps to one HTTP response with the OpenAI envelope."""

    def __init__(self, status: int, message: str, param: str | None = None, err_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or _TYPES.get(status, "server_error")

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }


def bad_request(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def require_str(body: Mapping[str, Any], name: str, *, max_len: int | None = None, allow_empty: bool = False) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise bad_request(name, f"'{name}' is required and must be a string")
    if not allow_empty and not value.strip():
        raise bad_request(name, f"'{name}' must not be empty")
    if max_len is not None and len(value) > max_len:
        raise bad_request(name, f"'{name}' is longer than {max_len} characters")
    return value


def optional_str(body: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(name, f"'{name}' must be a string")
    return value


def optional_choice(body: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise bad_request(name, f"'{name}' must be one of {', '.join(choices)}; got {value!r}")
    return value


def optional_int(
    body: Mapping[str, Any], name: str, default: int | None, *, lo: int | None = None, hi: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(name, f"'{name}' must be an integer")
    if lo is not None and value < lo:
        raise bad_request(name, f"'{name}' must be >= {lo}; got {value}")
    if hi is not None and value > hi:
        raise bad_request(name, f"'{name}' must be <= {hi}; got {value}")
    return value


def optional_float(
    body: Mapping[str, Any], name: str, default: float, *, lo: float | None = None, hi: float | None = None
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(name, f"'{name}' must be a number")
    number = float(value)
    if lo is not None and number < lo:
        raise bad_request(name, f"'{name}' must be >= {lo}; got {number}")
    if hi is not None and number > hi:
        raise bad_request(name, f"'{name}' must be <= {hi}; got {number}")
    return number


def optional_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(name, f"'{name}' must be true or false")
    return value


def optional_object(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(name, f"'{name}' must be an object")
    return value
