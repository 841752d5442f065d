"""Request-body checks for the /v1 routes: the fields the gateway itself relies on or must bound,
each failure a 400 naming the field (contracts.md §6 gives the shapes).

Engines validate the rest of their own fields (vLLM answers its own 400s, which pass through; the
appliance's workers check with the same rules, `appliance.fields`); the gateway checks before taking a
lease, so a bad request never queues or wakes a model. Every field rule comes from `appliance.fields`,
whose `FieldError` becomes an `InvalidRequest` here. Pure functions over the parsed JSON; they must not
know engines or do I/O.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from .. import fields
from ..fields import FieldError
from .errors import InvalidRequest

P = ParamSpec("P")
R = TypeVar("R")

SPEECH_FORMATS = fields.SPEECH_FORMATS
IMAGE_FORMATS = ("url", "b64_json")
MAX_IMAGES = fields.MAX_IMAGES
MAX_SPEECH_CHARS = fields.MAX_SPEECH_CHARS
MAX_SEED = 2**64 - 1  # ComfyUI's KSampler accepts up to 0xffffffffffffffff
MIN_SIDE, MAX_SIDE = 64, 2048


def _checked(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a check, turning the shared rules' FieldError into the gateway's InvalidRequest."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except FieldError as exc:
            raise InvalidRequest(exc.message, param=exc.field, code=exc.code) from None

    return run


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


opt_int = _checked(fields.opt_int)
opt_number = _checked(fields.opt_number)
opt_bool = _checked(fields.opt_bool)
opt_str = _checked(fields.opt_str)
opt_choice = _checked(fields.opt_choice)
_is_int = fields.is_int


def model_name(body: dict[str, Any], required: bool = True) -> str | None:
    value = body.get("model")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _bad("model", "is required and must be a non-empty string")
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
    opt_int(body, "n", lo=1, hi=128)
    opt_number(body, "temperature", lo=0.0, hi=2.0)
    opt_number(body, "top_p", lo=0.0, hi=1.0)
    field, limit = None, None
    for name in ("max_completion_tokens", "max_tokens"):
        value = opt_int(body, name, lo=1)
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


def _text_chars(value: object) -> int:
    """Characters of a prompt, a message's content (a string or text parts) or a list of them."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        text = value.get("text")
        return len(text) if isinstance(text, str) else 0
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


@_checked
def check_prompt_length(body: dict[str, Any], context_tokens: int | None) -> None:
    """Refuse a chat or prompt that cannot fit `context_tokens` by its length alone, before the engine
    spends seconds tokenizing it (`fields.CHARS_PER_TOKEN_BOUND`); no-op when the context is unknown."""
    if context_tokens is None:
        return
    if "messages" in body:
        messages = body["messages"]
        chars = sum(_text_chars(m.get("content")) for m in messages if isinstance(m, dict))
        fields.check_text_length(chars, context_tokens, "messages")
    else:
        fields.check_text_length(_text_chars(body.get("prompt")), context_tokens, "prompt")


def check_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    ok = (isinstance(value, str) and value != "") or (
        isinstance(value, list) and bool(value) and (
            all(isinstance(v, str) for v in value) or all(_is_int(v) for v in value)
            or all(isinstance(v, list) and bool(v) and all(_is_int(t) for t in v) for v in value)))
    if not ok:
        raise _bad("input", "is required: a non-empty string, an array of strings, or token arrays")
    opt_choice(body, "encoding_format", ("float", "base64"), "float")
    opt_int(body, "dimensions", lo=1)
    opt_bool(body, "truncate")  # the embed worker's extension: cut an over-long input instead of a 400


@dataclass(frozen=True, slots=True)
class ImageRequest:
    prompt: str
    n: int
    width: int | None  # None: the workflow's own size ("auto")
    height: int | None
    response_format: str
    seed: int | None
    negative_prompt: str


@_checked
def parse_size(value: object) -> tuple[int | None, int | None]:
    size = fields.parse_size(value, 8, MIN_SIDE, MAX_SIDE)
    return (None, None) if size is None else size


@_checked
def _refuse_unhonoured_image(body: dict[str, Any]) -> None:
    fields.refuse_unhonoured_image(body, "image engines")


def check_image(body: dict[str, Any]) -> ImageRequest:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("prompt", "is required and must be a non-empty string")
    _refuse_unhonoured_image(body)
    n = opt_int(body, "n", lo=1, hi=MAX_IMAGES) or 1
    width, height = parse_size(body.get("size"))
    fmt = opt_choice(body, "response_format", IMAGE_FORMATS, "url")
    seed = opt_int(body, "seed", lo=0, hi=MAX_SEED)
    negative = opt_str(body, "negative_prompt") or ""
    return ImageRequest(prompt, n, width, height, fmt, seed, negative)


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    response_format: str
    speed: float


@_checked
def check_speech(body: dict[str, Any]) -> SpeechRequest:
    fields.require_str(body, "input", max_len=MAX_SPEECH_CHARS)
    fields.speech_voice(body)  # any name: the speech worker maps it to a voice or refuses it
    fmt = body.get("response_format", "mp3")
    if fmt not in SPEECH_FORMATS:
        raise InvalidRequest(f"'response_format' {json.dumps(fmt)[:40]} is not supported; use one of "
                             f"{', '.join(SPEECH_FORMATS)}", param="response_format", code="unsupported_format")
    speed = fields.opt_number(body, "speed", lo=0.25, hi=4.0)
    return SpeechRequest(str(fmt), 1.0 if speed is None else speed)
