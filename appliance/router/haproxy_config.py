"""HAProxy's configuration text, rendered from packaging/haproxy/haproxy.cfg.tmpl. Pure: the caller
writes the file and the map files.

The servers are written with the plan's addresses and states, so a HAProxy started (or reloaded)
from this text routes like the plan before the first runtime-API command. Empty slots wait in
maintenance on a placeholder address. The fleet token is not in the file: HAProxy reads it from its
environment (`APPLIANCE_FLEET_TOKEN`), so the written config holds no secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from ..config import RouterConfig
from .plan import BoxSlot, RoutePlan

TEMPLATE = Path(__file__).resolve().parent.parent.parent / "packaging" / "haproxy" / "haproxy.cfg.tmpl"
PLACEHOLDER = ("127.0.0.1", 9)  # an empty slot's address (never used: the slot is in maintenance)


@dataclass(frozen=True)
class Paths:
    """Where the router keeps HAProxy's files (in <state_dir>/router/)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def socket(self) -> Path:
        return self.root / "haproxy.sock"

    @property
    def models_map(self) -> Path:
        return self.root / "models.map"

    @property
    def resident_map(self) -> Path:
        return self.root / "resident.map"

    @property
    def plan(self) -> Path:
        return self.root / "last-plan.json"

    @property
    def pid(self) -> Path:
        return self.root / "haproxy.pid"


def server_name(slot: int) -> str:
    return f"b{slot + 1}"


def backend_name(index: int) -> str:
    return f"m{index + 1}"


def tls_words(ca_file: str) -> str:
    """How HAProxy speaks TLS to an https box: verified against `router.box_ca_file` when set (the
    chain must lead to that CA: a box's certificate names an IP, so no host name is checked); else
    unverified, since boxes often use the appliance's own self-signed certificate (docs/fleet.md)."""
    return f"ssl verify required ca-file {ca_file}" if ca_file else "ssl verify none"


def _server(slot: int, box: BoxSlot | None, *, track: bool, enabled: bool, ca_file: str = "") -> str:
    address, port = (box.address, box.port) if box is not None else PLACEHOLDER
    host = f"[{address}]" if ":" in address else address
    words = [f"    server {server_name(slot)} {host}:{port}"]
    if box is not None and box.tls:
        words.append(tls_words(ca_file))
    words.append(f"track boxes/{server_name(slot)}" if track else "check")
    if not enabled:
        words.append("disabled")
    return " ".join(words)


def box_servers(plan: RoutePlan, ca_file: str = "") -> str:
    return "\n".join(_server(i, s, track=False, enabled=s is not None and s.admin != "maint", ca_file=ca_file)
                     for i, s in enumerate(plan.slots))


def member_servers(plan: RoutePlan, ids: frozenset[str], ca_file: str = "") -> str:
    return "\n".join(_server(i, s, track=True, enabled=s is not None and s.box_id in ids, ca_file=ca_file)
                     for i, s in enumerate(plan.slots))


def model_backends(plan: RoutePlan, ca_file: str = "") -> str:
    blocks = []
    for j, model in enumerate(plan.model_backends):
        ids = plan.members.get(model, frozenset()) if model is not None else frozenset()
        blocks.append(f"\n# {model or '(free)'}\nbackend {backend_name(j)}\n    balance leastconn\n"
                      + member_servers(plan, ids, ca_file))
    return "\n".join(blocks)


def bind_line(cfg: RouterConfig) -> str:
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    bind = f"{host}:{cfg.port}"
    return f"{bind} ssl crt {cfg.tls_pem}" if cfg.tls_pem else bind


def render(cfg: RouterConfig, paths: Paths, plan: RoutePlan, template: str | None = None) -> str:
    text = TEMPLATE.read_text() if template is None else template
    fallback = frozenset({plan.fallback}) if plan.fallback else frozenset()
    return Template(text).substitute(
        socket=str(paths.socket), bufsize=cfg.bufsize, bind=bind_line(cfg), api_port=cfg.api_port,
        check_interval_ms=cfg.check_interval_ms, check_timeout_ms=max(cfg.check_interval_ms, 1000),
        models_map=str(paths.models_map), resident_map=str(paths.resident_map),
        box_servers=box_servers(plan, cfg.box_ca_file),
        fallback_servers=member_servers(plan, fallback, cfg.box_ca_file),
        model_backends=model_backends(plan, cfg.box_ca_file))


def map_text(entries: dict[str, str]) -> str:
    return "".join(f"{key} {value}\n" for key, value in sorted(entries.items()))
