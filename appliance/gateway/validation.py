"""Request-body checks for the /v1 routes: the fields the gateway itself relies on or must bound,
each failure a 400 naming the field (contracts.md §6 gives the shapes).

Engines validate the rest of their own fields (vLLM answers its own 400s, which pass through); the
gateway checks before taking a lease, so a bad request never queues or wakes a model. Pure functions
over the parsed JSON; they must not know engines or do I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest

SPEECH_FORMATS = ("mp3", "opus", "flac", "wav", "pcm")
IMAGE_FORMATS = ("url", "b64_json")
MAX_IMAGES = 10
MAX_SPEECH_CHARS = 4096
MAX_SEED = 2**64 - 1  # ComfyUI's KSampler accepts up to 0xffffffffffffffff
MIN_SIDE, MAX_SIDE = 64, 2048


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("request body is empty: expected a JSON object")
    try:
        body = json.loads(raw.decode("utf-8"))  # a str skips json's encoding detection
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"'{field}' {message}", param=field)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def model_name(body: dict[str, Any], required: bool = True) -> str | None:
    value = body.get("model")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _bad("model", "is required and must be a non-empty string")
    return value


def opt_int(body: dict[str, Any], field: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not _is_int(value):
        raise _bad(field, f"must be an integer, got {json.dumps(value)[:40]}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise _bad(field, f"must be {bound}, got {value}")
    return int(value)


def opt_number(body: dict[str, Any], field: str, lo: float, hi: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if not _is_number(value):
        raise _bad(field, f"must be a number, got {json.dumps(value)[:40]}")
    if not lo <= value <= hi:
        raise _bad(field, f"must be between {lo} and {hi}, got {value}")
    return float(value)


def opt_bool(body: dict[str, Any], field: str) -> bool:
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(field, f"must be true or false, got {json.dumps(value)[:40]}")
    return value


def opt_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(field, "must be a string")
    return value


def opt_choice(body: dict[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise _bad(field, f"must be one of {', '.join(choices)}; got {json.dumps(value)[:40]}")
    return value


@dataclass(frozen=True, slots=True)
class Generation:
    """What the gateway needs from a chat or completion request."""

    stream: bool
    include_usage: bool
    max_tokens_field: str | None  # which of max_tokens / max_completion_tokens is set
    max_tokens: int | None


def _generation(body: dict[str, Any]) -> Generation:
    stream = opt_bool(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("stream_options", "must be an object")
        include_usage = opt_bool(options, "include_usage")
    opt_int(body, "n", 1, 128)
    opt_number(body, "temperature", 0.0, 2.0)
    opt_number(body, "top_p", 0.0, 1.0)
    field, limit = None, None
    for name in ("max_completion_tokens", "max_tokens"):
        value = opt_int(body, name, 1)
        if value is not None:
            field, limit = name, value
    return Generation(stream, include_usage, field, limit)


def check_chat(body: dict[str, Any]) -> Generation:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "is required and must be a non-empty array")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InvalidRequest(f"'messages[{i}]' must be an object with a string 'role'", param=f"messages[{i}]")
    return _generation(body)


def check_completion(body: dict[str, Any]) -> Generation:
    prompt = body.get("prompt")
    ok = isinstance(prompt, str) or (
        isinstance(prompt, list) and bool(prompt) and (
            all(isinstance(p, str) for p in prompt) or all(_is_int(p) for p in prompt)
            or all(isinstance(p, list) and all(_is_int(t) for t in p) for p in prompt)))
    if not ok:
        raise _bad("prompt", "is required: a string, an array of strings, or token arrays")
    return _generation(body)


def check_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    ok = (isinstance(value, str) and value != "") or (
        isinstance(value, list) and bool(value) and (
            all(isinstance(v, str) for v in value) or all(_is_int(v) for v in value)
            or all(isinstance(v, list) and bool(v) and all(_is_int(t) for t in v) for v in value)))
    if not ok:
        raise _bad("input", "is required: a non-empty string, an array of strings, or token arrays")
    opt_choice(body, "encoding_format", ("float", "base64"), "float")
    opt_int(body, "dimensions", 1)


@dataclass(frozen=True, slots=True)
class ImageRequest:
    prompt: str
    n: int
    width: int | None  # None: the workflow's own size ("auto")
    height: int | None
    response_format: str
    seed: int | None
    negative_prompt: str


def parse_size(value: object) -> tuple[int | None, int | None]:
    if value is None or value == "auto":
        return None, None
    if isinstance(value, str):
        w, sep, h = value.lower().partition("x")
        if sep and w.isdigit() and h.isdigit():
            width, height = int(w), int(h)
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
                raise _bad("size", f"sides must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {value}")
            if width % 8 or height % 8:
                raise _bad("size", f"sides must be multiples of 8, got {value}")
            return width, height
    raise _bad("size", f"must be 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto', got {json.dumps(value)[:40]}")


def check_image(body: dict[str, Any]) -> ImageRequest:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("prompt", "is required and must be a non-empty string")
    n = opt_int(body, "n", 1, MAX_IMAGES) or 1
    width, height = parse_size(body.get("size"))
    fmt = opt_choice(body, "response_format", IMAGE_FORMATS, "url")
    seed = opt_int(body, "seed", 0, MAX_SEED)
    negative = opt_str(body, "negative_prompt") or ""
    return ImageRequest(prompt, n, width, height, fmt, seed, negative)


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    response_format: str
    speed: float


def check_speech(body: dict[str, Any]) -> SpeechRequest:
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise _bad("input", "is required and must be a non-empty string")
    if len(text) > MAX_SPEECH_CHARS:
        raise _bad("input", f"is longer than {MAX_SPEECH_CHARS} characters ({len(text)})")
    voice = body.get("voice")
    if not (isinstance(voice, str) and voice) and not (isinstance(voice, dict) and isinstance(voice.get("id"), str)):
        raise _bad("voice", "is required: a voice name")
    fmt = body.get("response_format", "mp3")
    if fmt not in SPEECH_FORMATS:
        raise InvalidRequest(f"'response_format' {json.dumps(fmt)[:40]} is not supported; use one of "
                             f"{', '.join(SPEECH_FORMATS)}", param="response_format", code="unsupported_format")
    speed = opt_number(body, "speed", 0.25, 4.0)
    return SpeechRequest(str(fmt), 1.0 if speed is None else speed)
