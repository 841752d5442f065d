"""How a CLI command reaches the running daemon: its URL, its key, and the certificate to trust.

The daemon is found the way it was configured: `APPLIANCE_URL` when set, else the host and port of the
configuration the CLI resolved (the installed one first, see appliance.cli.resolve_config_path), over
HTTPS when that configuration serves TLS. The key is `APPLIANCE_API_KEY`, else the admin key install.sh
stored beside the configuration (the receipt's key_file). A generated certificate is self-signed: it is
trusted as its own authority, on top of the system's.

It owns `DaemonTarget` and one JSON request helper; it must not parse configuration files (the CLI passes
a loaded Config), print, or exit: errors are `DaemonError` / `DaemonUnreachable` for the caller to show.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import Config
from .install_receipt import Receipt, daemon_base, read_key_file


def _is_loopback(host: str) -> bool:
    # gateway.auth has the same test, but importing the gateway would load the daemon's stack into every
    # CLI command (test_catalog's heavy-import guard).
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DaemonError(Exception):
    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url}: {status} {message}")
        self.status = status


class DaemonUnreachable(Exception):
    pass


@dataclass(frozen=True)
class DaemonTarget:
    base: str
    key: str | None
    cafile: Path | None

    def ssl_context(self) -> ssl.SSLContext | None:
        parts = urlsplit(self.base)
        if parts.scheme != "https":
            return None
        ctx = ssl.create_default_context()
        if self.cafile is not None and self.cafile.is_file():
            ctx.load_verify_locations(cafile=str(self.cafile))
            # On this box the loopback address is trusted by being local; a user's certificate names the
            # public host, not 127.0.0.1. The chain is still verified.
            if _is_loopback((parts.hostname or "").strip("[]")):
                ctx.check_hostname = False
        return ctx


def find_daemon(env: Mapping[str, str], config: Config | None, receipt: Receipt | None) -> DaemonTarget:
    tls_cert = config.server.tls_cert if config is not None else ""
    base = daemon_base(env, config.server.host if config else None, config.server.port if config else None,
                       bool(tls_cert))
    key = env.get("APPLIANCE_API_KEY") or read_key_file(receipt.key_file if receipt else None)
    cafile = Path(tls_cert).expanduser() if tls_cert else (receipt.tls_cert if receipt else None)
    return DaemonTarget(base, key or None, cafile)


def request_json(target: DaemonTarget, path: str, method: str = "GET", timeout_s: float = 30.0, *,
                 data: bytes | None = None, ctype: str = "application/json") -> Any:
    """One call to the daemon; its JSON answer, or DaemonError (with the error's message) / DaemonUnreachable."""
    req = urllib.request.Request(target.base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    if target.key:
        req.add_header("Authorization", f"Bearer {target.key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=target.ssl_context()) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = exc.reason
        raise DaemonError(target.base + path, exc.code, str(msg)) from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        raise DaemonUnreachable(f"cannot reach the daemon at {target.base} ({exc}); is it running?") from None
