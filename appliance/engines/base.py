"""The adapter protocol every engine kind implements, and what they share.

An adapter knows one engine kind's command line and environment, its readiness probe, how to
`activate` it (wake or load onto the GPU) and how to `release(tier)` it (sleep/offload to host RAM,
or drop the weights), how to make it drop a data request the gateway abandoned (`cancel`), and what
its process group holds on the GPU. It does not own the process
(the supervisor does) and does not decide when to do any of this (the residency scheduler does).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ..catalog import Catalog, load_catalog
from ..config import Config
from ..gpu import GpuSnapshot
from ..scheduler.types import Tier
from ..supervisor.launcher import LaunchSpec

LOOPBACK = "127.0.0.1"

__all__ = ["LOOPBACK", "Adapter", "ControlError", "EngineContext", "Tier", "expand"]


class ControlError(Exception):
    """An engine's control route failed (status or transport)."""


@dataclass(frozen=True)
class EngineContext:
    """What adapters need from the daemon: where state lives, where the gateway listens, the GPU's
    total memory (0: unknown) and the model catalog the daemon loaded (`server.catalog_file`, else
    the bundled one)."""

    config: Config
    state_dir: Path
    gateway_url: str
    python: str = sys.executable
    catalog: Catalog | None = None  # None: loaded from the configuration on first use
    gpu_total_bytes: int = 0
    # the gateway API key an engine that calls the gateway uses (Open WebUI), created for it; None: none
    engine_key: Callable[[str], str] | None = None

    def model_catalog(self) -> Catalog:
        """The daemon's catalog; without one, the catalog the configuration names (never a
        different one: `server.catalog_file` holds wherever a catalog is read)."""
        if self.catalog is not None:
            return self.catalog
        return load_catalog(self.config.server.catalog_file or None)

    def engine_dir(self, name: str) -> Path:
        path = self.state_dir / "engines" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class Adapter:
    kind = "base"
    readiness_path = "/health"
    releasable: frozenset[Tier] = frozenset()  # tiers release() can reach without stopping
    release_unloads_all = False  # release() unloads every model the engine holds, not just one
    supports_prefetch = False  # prefetch() wakes a sleeping engine's weights alone (a staged wake)
    activation_timed = True  # start/activate() do the loading, so timing them measures it

    def __init__(self, name: str, ctx: EngineContext) -> None:
        self.name = name
        self.ctx = ctx
        self.cfg = ctx.config.engines[name]

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.cfg.port}"

    @property
    def models(self) -> list[str]:
        return self.ctx.config.models_of(self.name)

    def launch_spec(self) -> LaunchSpec:
        raise NotImplementedError

    def missing_weights(self) -> bool:
        """True when the engine's weights are known to be absent from this box (so starting it can only
        fail): a request then gets a 503 naming `appliance pull` instead of a failed load."""
        return False

    async def probe(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.base_url + self.readiness_path,
                                   timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def activate(self, session: aiohttp.ClientSession) -> None:
        """Bring the weights onto the GPU (wake or load). Default: nothing to do."""

    async def prefetch(self, session: aiohttp.ClientSession) -> None:
        """Bring a sleeping engine's weights back alone; activate() then wakes the rest."""
        raise ControlError(f"{self.name}: {self.kind} engines have no staged wake")

    async def release(self, session: aiohttp.ClientSession, tier: Tier) -> None:
        """Move the weights down to `tier` (HOST or DISK) while the process keeps running."""
        raise ControlError(f"{self.name}: {self.kind} engines cannot release to {tier.value}")

    def memory_held(self, snapshot: GpuSnapshot, pids: set[int]) -> int:
        return snapshot.used_by(pids)

    @property
    def idle_timeout_s(self) -> float | None:
        """How long the data path waits for a byte from this engine (None: no data path of its own)."""
        value = getattr(self.cfg, "idle_timeout_s", None)
        return float(value) if value is not None else None

    async def cancel(self, session: aiohttp.ClientSession, request_id: str) -> None:
        """Return once the engine has stopped working on the data request `request_id`, whose
        connection the gateway closed. Default: closing is enough (vLLM aborts a request whose client
        disconnects, between two steps of its batch; there is no route to confirm it)."""

    async def _post(self, session: aiohttp.ClientSession, path: str, *, json_body: object | None = None,
                    timeout_s: float = 120.0) -> bytes:
        try:
            async with session.post(self.base_url + path, json=json_body,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ControlError(f"{self.name}: POST {path} -> {resp.status} {body[:200]!r}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControlError(f"{self.name}: POST {path} failed: {exc!r}") from exc

    async def _get_json(self, session: aiohttp.ClientSession, path: str, timeout_s: float = 10.0) -> object:
        try:
            async with session.get(self.base_url + path, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status != 200:
                    raise ControlError(f"{self.name}: GET {path} -> {resp.status}")
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ControlError(f"{self.name}: GET {path} failed: {exc!r}") from exc


def expand(path: str) -> str:
    return str(Path(path).expanduser())
