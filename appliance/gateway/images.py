"""Generated images behind short-lived signed URLs (`response_format: "url"`).

An image is written once under `<state>/data/images/`, and its URL carries an expiry and an HMAC of
(name, expiry) under a secret kept in `<state>/data/image_url.key`, so an `<img>` tag loads it without
the API key and the URL stops working after `server.image_url_ttl_s`. Files are kept `keep_s`
(`store.image_retention_h`, at least the URL lifetime: a finished job re-signs its images' URLs while
their files last) and then swept.
It must not serve anything it did not store (names are random and checked against a strict pattern).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

from .errors import Forbidden, NotFound

ROUTE = "/images/"
_NAME = re.compile(r"^[A-Za-z0-9_-]{16,64}\.(png|jpg|webp)$")
SWEEP_EVERY_S = 60.0


def sniff(data: bytes) -> tuple[str, str]:
    """(extension, content type) of encoded image bytes."""
    if data.startswith(b"\x89PNG"):
        return "png", "image/png"
    if data.startswith(b"\xff\xd8"):
        return "jpg", "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return "png", "image/png"


class ImageStore:
    def __init__(self, directory: Path, secret_file: Path, ttl_s: int,
                 clock: Callable[[], float] = time.time, keep_s: float | None = None) -> None:
        self.directory = directory
        self.ttl_s = ttl_s
        self.keep_s = max(float(ttl_s), keep_s or 0.0)
        self._clock = clock
        self._secret = self._load_secret(secret_file)
        self._next_sweep = 0.0
        directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _load_secret(path: Path) -> bytes:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        return path.read_bytes()

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def put(self, data: bytes, base_url: str) -> str:
        """Store `data` and return its signed URL under `base_url` (scheme://host of the request)."""
        self.sweep()
        ext, _ = sniff(data)
        name = f"{secrets.token_urlsafe(18)}.{ext}"
        (self.directory / name).write_bytes(data)
        return self.sign(name, base_url)

    def sign(self, name: str, base_url: str) -> str:
        """A fresh signed URL for a stored image, valid for `ttl_s` from now."""
        expires = int(self._clock()) + self.ttl_s
        return f"{base_url}{ROUTE}{name}?expires={expires}&sig={self._signature(name, expires)}"

    @staticmethod
    def name_of(url: str) -> str | None:
        """The stored file name a URL made by `sign` points at."""
        _, found, rest = url.partition(ROUTE)
        name = rest.split("?", 1)[0]
        return name if found and _NAME.match(name) else None

    def load(self, name: str, query: str) -> tuple[bytes, str, int]:
        """(bytes, content type, seconds left) for a valid signed request; raise 403/404 otherwise."""
        if not _NAME.match(name):
            raise NotFound("no such image")
        params = parse_qs(query)
        try:
            expires = int(params["expires"][0])
            sig = params["sig"][0]
        except (KeyError, IndexError, ValueError):
            raise Forbidden("image URL is not signed: it needs 'expires' and 'sig'") from None
        if not hmac.compare_digest(sig, self._signature(name, expires)):
            raise Forbidden("image URL signature is invalid")
        left = expires - int(self._clock())
        if left <= 0:
            raise Forbidden("image URL has expired")
        try:
            data = (self.directory / name).read_bytes()
        except FileNotFoundError:
            raise NotFound("image no longer stored") from None
        return data, sniff(data)[1], left

    def sweep(self, force: bool = False) -> int:
        """Delete images older than `keep_s`; at most once a minute unless `force`. Returns how many."""
        now = self._clock()
        if now < self._next_sweep and not force:
            return 0
        self._next_sweep = now + SWEEP_EVERY_S
        removed = 0
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime + self.keep_s < now:
                    path.unlink()
                    removed += 1
        return removed
