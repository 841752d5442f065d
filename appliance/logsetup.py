"""The daemon's log lines: JSON objects or human-readable text, with the request they belong to.

Owns: the request context (`REQUEST_ID`, `MODEL`, `ENGINE`, `KEY_ID`: context variables the gateway
sets while it serves a request, so every line that request causes carries them, in the tasks it
starts too), `RequestContext` (the logging filter that copies them onto each record),
`JsonFormatter` (one object per line: time, level, logger, message, request_id, model, engine,
key_id, and the exception when there is one), `TextFormatter` and `configure()`, which the CLI
calls once at start (`server.log_format`: `auto` is text on a terminal, JSON lines otherwise).

Must not: log a key, an Authorization header or a prompt's content (only ids are carried), nor
decide where engines' own output goes (supervisor.logs writes it, one file per engine).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import TextIO

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
MODEL: ContextVar[str | None] = ContextVar("model", default=None)
ENGINE: ContextVar[str | None] = ContextVar("engine", default=None)
KEY_ID: ContextVar[str | None] = ContextVar("key_id", default=None)
FIELDS = ("request_id", "model", "engine", "key_id")
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def request_id(sent: bytes | None) -> str:
    """The client's `X-Request-Id` when it is a short plain token (so a proxy's id carries through),
    else a new random one. Anything else a client sends is not trusted into logs."""
    if sent is not None and _CLIENT_ID.fullmatch(sent):
        return sent.decode("ascii")
    return secrets.token_hex(8)


class RequestContext(logging.Filter):
    """Puts the current request's ids on every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.model = MODEL.get()
        record.engine = ENGINE.get()
        record.key_id = KEY_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request model]: message`, the ids only when there are some."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [str(v) for v in (getattr(record, "request_id", None), getattr(record, "model", None)) if v]
        record.context = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Install one handler on the root logger (replacing any); `fmt` is `auto`, `text` or `json`."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if out.isatty() else "json"
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestContext())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
