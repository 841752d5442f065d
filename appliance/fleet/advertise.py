"""The URL a box advertises to the fleet (what the router reaches it at): a pure function of the
configuration, the command line and the environment variables the CLI read.

Order: `--advertise-url` (explicit), else `fleet.advertise_url`, else on vast.ai (`PUBLIC_IPADDR` set)
`PUBLIC_IPADDR` and `VAST_TCP_PORT_<server.port>` (vast.ai maps each container port to a random public
port and names it so), else `server.host` (or, bound to all interfaces, this host's address toward the
router) and `server.port`. A computed loopback address is refused: no other box could reach it.
It must not read the environment or open sockets: the CLI passes `env` and `local_address` in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

WILDCARDS = ("0.0.0.0", "::", "")


class AdvertiseError(Exception):
    """No usable URL; one line saying what to pass or set."""


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """`url` as http(s)://host[:port] without a path; AdvertiseError naming `what` otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise AdvertiseError(f"{what}: must be http(s)://host:port (no path), got {url!r}")
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError:
        raise AdvertiseError(f"{what}: bad port in {url!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def advertise_url(*, scheme: str, host: str, port: int, env: Mapping[str, str], local_address: str | None,
                  explicit: str = "", configured: str = "") -> str:
    if explicit:
        return check_url(explicit, "--advertise-url")
    if configured:
        return check_url(configured, "fleet.advertise_url")
    public = env.get("PUBLIC_IPADDR", "").strip()
    if public:
        mapped = env.get(f"VAST_TCP_PORT_{port}", "").strip()
        if not mapped.isdigit():
            raise AdvertiseError(f"vast.ai: server.port {port} is not mapped to a public port (no "
                                 f"VAST_TCP_PORT_{port} in the environment): expose it in the instance's "
                                 "template, or pass --advertise-url")
        return f"{scheme}://{_hostport(public, int(mapped))}"
    chosen = local_address if host in WILDCARDS else host
    if not chosen:
        raise AdvertiseError("cannot tell this host's address: pass --advertise-url")
    if _is_loopback(chosen):
        raise AdvertiseError(f"the computed URL {scheme}://{_hostport(chosen, port)} is a loopback address that "
                             "no other box can reach (server.host is loopback): bind a reachable address, or "
                             "pass --advertise-url to advertise it anyway")
    return f"{scheme}://{_hostport(chosen, port)}"
