"""Request rules of OpenAI's transcription and translation routes, shared by the gateway and the STT worker.

Owns reading a `multipart/form-data` body and writing one again (`parse_form`, `encode_form`: text
fields, repeated fields such as `timestamp_granularities[]`, and the one `file` part), and checking it
(`check_transcription`): the `file` part present and not empty, at most `MAX_UPLOAD_BYTES` (OpenAI's
25 MB), `model` a string, `language` an ISO-639-1 code Whisper knows, `prompt` text, `temperature`
0-1, `response_format` one of json, text, srt, vtt, verbose_json, `timestamp_granularities` word
and/or segment (only with verbose_json, as OpenAI requires), `stream` a boolean (refused with srt, vtt
and verbose_json); fields this API does not know are refused (`refuse_unknown`). On a translation,
`language` (not one of OpenAI's fields there) declares the language spoken, which the engine may
refuse, and `stream` is taken too (OpenAI streams only transcriptions). Each problem is a
`FieldError` naming the field. Pure functions over bytes, standard library only (the worker imports
this module); it must not decode audio, do I/O or know engines.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from .fields import FieldError

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit on an audio upload
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
# Whisper's languages (ISO-639-1, plus haw and yue, as Whisper names them)
_LANGUAGE_CODES = (
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu hy "
    "id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru "
    "sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo yue zh"
)
LANGUAGES = frozenset(_LANGUAGE_CODES.split())
_BOUNDARY = re.compile(r'boundary="?([0-9A-Za-z\'()+_,./:=?-]{1,70})"?', re.IGNORECASE)  # RFC 2046's characters
_DISPOSITION_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"|(\w+)=([^;\s]+)')


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def all(self, name: str) -> list[str]:
        return [*self.fields.get(name, []), *self.fields.get(name + "[]", [])]


@dataclass(frozen=True)
class TranscriptionRequest:
    upload: Upload
    model: str | None
    language: str | None
    prompt: str | None
    temperature: float
    response_format: str
    granularities: tuple[str, ...]
    stream: bool


def parse_form(content_type: str, body: bytes) -> Form:
    """The parts of a multipart/form-data body; a `FieldError` on `file` when it is not one."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise FieldError("file", "the request must be multipart/form-data with the audio in a 'file' part "
                         f"(got Content-Type {content_type[:60] or 'none'!r})")  # fmt: skip
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise FieldError("file", "the multipart Content-Type names no boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, list[str]] = {}
    files: dict[str, Upload] = {}
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise FieldError("file", "the multipart body has no parts")
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise FieldError("file", "a multipart part has no header block")
        content = content.removesuffix(b"\r\n")
        headers = _headers(head.decode("utf-8", "replace"))
        params = _disposition(headers.get("content-disposition", ""))
        name = params.get("name")
        if not name:
            raise FieldError("file", "a multipart part has no name")
        if "filename" in params:
            files[name] = Upload(params["filename"], headers.get("content-type", ""), content)
        else:
            fields.setdefault(name, []).append(content.decode("utf-8", "replace"))
    return Form(fields, files)


def encode_form(form: Form, model: str | None = None) -> tuple[bytes, bytes]:
    """(body, Content-Type) of `form` as multipart/form-data again, `model` set when given (the
    gateway names the configured model its worker knows)."""
    boundary = "appliance-" + secrets.token_hex(12)
    fields = {**form.fields, **({"model": [model]} if model is not None else {})}
    parts: list[bytes] = []
    for name, values in fields.items():
        for value in values:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'
                         f"{value}\r\n".encode())  # fmt: skip
    for name, upload in form.files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"; '
                f'filename="{_quoted(upload.filename)}"\r\nContent-Type: '
                f"{_quoted(upload.content_type) or 'application/octet-stream'}\r\n\r\n")  # fmt: skip
        parts.append(head.encode() + upload.data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}".encode()


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def _headers(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _disposition(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _DISPOSITION_PARAM.finditer(value):
        if m.group(1):
            out[m.group(1).lower()] = m.group(2).replace('\\"', '"')
        else:
            out[m.group(3).lower()] = m.group(4)
    return out


def _bool(form: Form, name: str) -> bool:
    value = form.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise FieldError(name, f"'{name}' must be true or false; got {value[:20]!r}")
    return lowered in ("true", "1")


def check_transcription(form: Form, *, translation: bool = False,
                        max_upload_bytes: int = MAX_UPLOAD_BYTES) -> TranscriptionRequest:  # fmt: skip
    upload = form.files.get("file")
    if upload is None:
        raise FieldError("file", "'file' is required: send the audio as a multipart file part named 'file'")
    if not upload.data:
        raise FieldError("file", f"'file' ({upload.filename or 'unnamed'}) is empty")
    if len(upload.data) > max_upload_bytes:
        raise FieldError("file", f"'file' is {len(upload.data)} bytes; at most {max_upload_bytes} are accepted",
                         code="file_too_large")  # fmt: skip
    language = form.get("language")
    if language is not None:
        language = language.strip().lower()
        if language not in LANGUAGES:
            raise FieldError("language", f"'language' must be an ISO-639-1 code Whisper knows (en, de, fr, ...); "
                             f"got {language[:20]!r}", code="unsupported_language")  # fmt: skip
    fmt = form.get("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise FieldError("response_format", f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}; "
                         f"got {fmt[:20]!r}")  # fmt: skip
    temperature = 0.0
    raw_temp = form.get("temperature")
    if raw_temp is not None:
        try:
            temperature = float(raw_temp)
        except ValueError:
            raise FieldError("temperature", f"'temperature' must be a number; got {raw_temp[:20]!r}") from None
        if not 0.0 <= temperature <= 1.0:
            raise FieldError("temperature", f"'temperature' must be between 0 and 1; got {temperature}")
    granularities = tuple(dict.fromkeys(form.all("timestamp_granularities")))
    for g in granularities:
        if g not in GRANULARITIES:
            raise FieldError("timestamp_granularities",
                             f"'timestamp_granularities' takes word and segment; got {g[:20]!r}")
    if granularities and fmt != "verbose_json":
        raise FieldError("timestamp_granularities", "'timestamp_granularities' needs response_format verbose_json")
    stream = _bool(form, "stream")
    if stream and fmt not in ("json", "text"):
        raise FieldError("stream", f"'stream' needs response_format json or text; got {fmt}")
    return TranscriptionRequest(upload, form.get("model"), language, form.get("prompt"), temperature, fmt,
                                granularities or ("segment",), stream)  # fmt: skip


def refuse_unknown(form: Form, known: Mapping[str, object] | None = None) -> None:
    """A field this API does not know is refused, never silently ignored."""
    allowed = {"model", "language", "prompt", "temperature", "response_format", "timestamp_granularities",
               "timestamp_granularities[]", "stream", "chunking_strategy", *(known or {})}  # fmt: skip
    for name in form.fields:
        if name not in allowed:
            raise FieldError(name, f"'{name}' is not a parameter of this route", code="unknown_parameter")
    for name in form.files:
        if name != "file":
            raise FieldError(name, f"'{name}' is not a file part this route takes (only 'file')")
    if form.get("chunking_strategy") not in (None, "auto"):
        raise FieldError("chunking_strategy", "'chunking_strategy' takes only \"auto\"")
