"""The web UI's static files: `GET /` (index.html) and `GET /ui/<file>` from the package's `ui/` folder.

The files are read once, at construction, into memory and served with their content type, `no-cache`
(a new version shows after an upgrade) and a Content-Security-Policy that lets the page talk only to
this origin (nothing from a CDN, no inline script, no request leaving the box).
They are public: no file holds a secret, and signing in happens in the browser against `/api/whoami`.
It must not serve anything outside the `ui/` folder, nor decide authentication (gateway.front does).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ApiError, MethodNotAllowed, NotFound
from .exchange import Exchange

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
ROUTE = "/ui/"
TYPES = {".html": b"text/html; charset=utf-8", ".css": b"text/css; charset=utf-8",
         ".js": b"text/javascript; charset=utf-8", ".svg": b"image/svg+xml", ".png": b"image/png",
         ".ico": b"image/x-icon", ".json": b"application/json"}
CSP = (b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; "
       b"connect-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
       b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class StaticUi:
    """The UI's files by URL path (`/` and `/ui/...`), held in memory."""

    def __init__(self, root: Path = UI_DIR) -> None:
        self.files: dict[str, tuple[bytes, bytes]] = {}
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                ctype = TYPES.get(path.suffix)
                if path.is_file() and ctype is not None:
                    self.files[ROUTE + path.relative_to(root).as_posix()] = (path.read_bytes(), ctype)
        index = self.files.get(ROUTE + "index.html")
        if index is not None:
            self.files["/"] = index

    def owns(self, path: str) -> bool:
        return path == "/" or path.startswith(ROUTE)

    def weight(self) -> int:
        """Bytes of every file the UI serves (index.html counted once)."""
        return sum(len(body) for url, (body, _) in self.files.items() if url != "/")

    async def serve(self, ex: Exchange, path: str) -> None:
        try:
            if ex.scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed("the web UI is read with GET")
            found = self.files.get(path)
            if found is None:
                raise NotFound(f"no UI file {path}")
        except ApiError as err:
            await ex.fail(err)
            return
        body, ctype = found
        await ex.respond(200, body, ctype, [(b"cache-control", b"no-cache"), (b"content-security-policy", CSP),
                                            (b"x-content-type-options", b"nosniff"),
                                            (b"referrer-policy", b"no-referrer")])
