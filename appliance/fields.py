"""Request-body rules for the OpenAI routes, shared by the gateway and the workers.

Owns the one way a request field is checked (`require_str`, `opt_int`, ... each raising `FieldError`,
which names the field) and the request-level rules both sides must agree on: OpenAI's voice names,
the speech formats and length, the image size grammar, the chat fields the appliance's own workers do
not honour, and the cheap length bound that refuses a prompt before it is tokenized. The gateway turns
a `FieldError` into its `InvalidRequest`, a worker into its `OpenAIError`: both render the same
envelope (`{"error": {"message", "type", "param", "code"}}`, `code` a string or null).

Pure functions over parsed JSON, standard library only: the workers import this module, including the
XTTS worker from its own virtual environment, so it must not import pydantic, aiohttp, starlette or
anything else of the daemon's; it must not do I/O or know engines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class FieldError(Exception):
    """One request field is missing or invalid: a 400 whose `param` is `field`."""

    def __init__(self, field: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code


def _shown(value: object) -> str:
    return json.dumps(value)[:40]


def _bad(field: str, message: str) -> FieldError:
    return FieldError(field, f"'{field}' {message}")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def require_str(body: Mapping[str, Any], field: str, *, max_len: int | None = None, allow_empty: bool = False) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise _bad(field, "is required and must be a string")
    if not allow_empty and not value.strip():
        raise _bad(field, "must not be empty")
    if max_len is not None and len(value) > max_len:
        raise _bad(field, f"is longer than {max_len} characters ({len(value)})")
    return value


def opt_str(body: Mapping[str, Any], field: str, default: str | None = None) -> str | None:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {_shown(value)}")
    return value


def opt_choice(body: Mapping[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise _bad(field, f"must be one of {', '.join(choices)}; got {_shown(value)}")
    return value


def opt_int(
    body: Mapping[str, Any], field: str, default: int | None = None, *, lo: int | None = None, hi: int | None = None
) -> int | None:
    value = body.get(field)
    if value is None:
        return default
    if not is_int(value):
        raise _bad(field, f"must be an integer, got {_shown(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _bad(field, f"must be {_range(lo, hi)}, got {value}")
    return int(value)


def opt_number(
    body: Mapping[str, Any], field: str, default: float | None = None, *, lo: float | None = None,
    hi: float | None = None,
) -> float | None:  # fmt: skip
    value = body.get(field)
    if value is None:
        return default
    if not is_number(value):
        raise _bad(field, f"must be a number, got {_shown(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _bad(field, f"must be {_range(lo, hi)}, got {value}")
    return float(value)


def opt_float(
    body: Mapping[str, Any], field: str, default: float, *, lo: float | None = None, hi: float | None = None
) -> float:
    """`opt_number` with a default, so never None."""
    value = opt_number(body, field, default, lo=lo, hi=hi)
    return default if value is None else value


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def opt_bool(body: Mapping[str, Any], field: str, default: bool = False) -> bool:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(field, f"must be true or false, got {_shown(value)}")
    return value


def opt_object(body: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(field, "must be an object")
    return value


# --- speech -------------------------------------------------------------------------------------

# The names OpenAI's speech API takes (and Open WebUI and most clients send): each maps to one of a
# model's own voices through `models.NAME.voices`, else to the model's default voice.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
SPEECH_FORMATS = ("mp3", "opus", "flac", "wav", "pcm")
MAX_SPEECH_CHARS = 4096


def speech_voice(body: Mapping[str, Any]) -> str:
    """The requested voice name (`voice` as a string, or `{"id": name}` as newer SDKs send it)."""
    voice = body.get("voice")
    if isinstance(voice, dict) and isinstance(voice.get("id"), str) and voice["id"]:
        return str(voice["id"])
    if isinstance(voice, str) and voice:
        return voice
    raise _bad("voice", "is required: a voice name")


# --- images -------------------------------------------------------------------------------------

MAX_IMAGES = 10


def parse_size(value: object, multiple: int = 8, lo: int = 64, hi: int = 2048) -> tuple[int, int] | None:
    """`size` as (width, height), or None for a missing size or "auto" (the model's default size)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        w, sep, h = value.lower().partition("x")
        if sep and w.isdigit() and h.isdigit():
            width, height = int(w), int(h)
            if not (lo <= width <= hi and lo <= height <= hi):
                raise _bad("size", f"sides must be between {lo} and {hi} pixels, got {value}")
            if width % multiple or height % multiple:
                raise _bad("size", f"sides must be multiples of {multiple}, got {value}")
            return width, height
    raise _bad("size", f"must be 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto', got {_shown(value)}")


# --- text ---------------------------------------------------------------------------------------

# Prose and code average 3-5 characters per token; a text averaging more than this over a whole context
# (only long runs of one repeated character could) is not one a model serves. So a text longer than
# `context x CHARS_PER_TOKEN_BOUND` characters is refused without being tokenized: tokenizing megabytes
# takes seconds, and the answer would be the same 400.
CHARS_PER_TOKEN_BOUND = 32

# Chat fields the appliance's text worker cannot honour (no tool calling, no constrained decoding, no
# logit processors): refused with a 400 naming the field rather than ignored. The value each may have
# and still mean "nothing asked" is listed; any other value is refused.
_UNHONOURED_CHAT: dict[str, tuple[object, ...]] = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "min_tokens": (None, 0),
    "best_of": (None, 1),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "structured_outputs": (None,),
    "audio": (None,),
    "prediction": (None,),
}
_TEXT_RESPONSE_FORMATS = ("text",)


def refuse_unhonoured(body: Mapping[str, Any], worker: str) -> None:
    """A 400 for the first field in `body` that asks for something the worker `worker` cannot do."""
    for field, neutral in _UNHONOURED_CHAT.items():
        value = body.get(field)
        if not any(type(value) is type(n) and value == n for n in neutral):
            raise FieldError(field, f"'{field}' is not supported by the {worker} (got {_shown(value)})",
                             code="unsupported_parameter")  # fmt: skip
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is not None and kind not in _TEXT_RESPONSE_FORMATS:
        raise FieldError("response_format", f"'response_format' {_shown(fmt)} is not supported by the {worker}: "
                         "it only writes free text ({\"type\": \"text\"})", code="unsupported_parameter")  # fmt: skip
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise FieldError("modalities", f"'modalities' {_shown(modalities)} is not supported by the {worker}",
                         code="unsupported_parameter")  # fmt: skip


# OpenAI's image fields that neither ComfyUI's workflows nor the diffusers worker honour, with the values that
# ask for nothing (their defaults). Anything else is refused with a 400 naming the field.
_UNHONOURED_IMAGE: dict[str, tuple[str, ...]] = {
    "quality": ("auto", "standard"), "style": (), "background": ("auto",), "moderation": ("auto",),
}


def refuse_unhonoured_image(body: Mapping[str, Any], engine: str) -> None:
    """A 400 for the first image field in `body` that asks for something `engine` cannot do."""
    for field, neutral in _UNHONOURED_IMAGE.items():
        value = body.get(field)
        if value is not None and value not in neutral:
            only = f" (only {', '.join(neutral)})" if neutral else ""
            raise FieldError(field, f"'{field}' {_shown(value)} is not supported by the {engine}{only}",
                             code="unsupported_parameter")


def check_text_length(chars: int, context_tokens: int, field: str) -> None:
    """Refuse a text of `chars` characters that cannot fit `context_tokens` (see CHARS_PER_TOKEN_BOUND)."""
    bound = context_tokens * CHARS_PER_TOKEN_BOUND
    if context_tokens > 0 and chars > bound:
        raise FieldError(field, f"'{field}' has {chars} characters: more than this model's context of "
                         f"{context_tokens} tokens can hold (at most {bound} characters)",
                         code="context_length_exceeded")  # fmt: skip
