"""Engine: one supervised process plus its adapter and pooled HTTP client.

This is the object the residency manager and the admin API act on. It owns the engine's
aiohttp session; the ManagedProcess owns the process; the adapter knows the engine kind.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from ..config import Config
from ..events import EventBus
from ..gpu import GpuProbe
from ..supervisor.launcher import Launcher
from ..supervisor.logs import OutputLog
from ..supervisor.process import ManagedProcess, ProcessTimings
from ..supervisor.states import ProcessState
from .base import Adapter, EngineContext, Tier
from .comfyui import ComfyUIAdapter
from .openwebui import OpenWebUIAdapter
from .vllm import VllmAdapter
from .worker import WorkerAdapter


class Engine:
    def __init__(self, adapter: Adapter, launcher: Launcher, bus: EventBus, probe: GpuProbe) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.gpu = probe
        cfg = adapter.cfg
        log_path = adapter.ctx.state_dir / "logs" / f"{self.name}.log"
        self._session: aiohttp.ClientSession | None = None
        self.process = ManagedProcess(
            self.name,
            adapter.launch_spec,
            self._probe,
            launcher,
            ProcessTimings(
                ready_timeout_s=cfg.ready_timeout_s,
                stop_grace_s=cfg.stop_grace_s,
                max_failures=cfg.restart.max_failures,
                window_s=cfg.restart.window_s,
                backoff_initial_s=cfg.restart.backoff_initial_s,
                backoff_max_s=cfg.restart.backoff_max_s,
                fatal_retry_s=cfg.restart.fatal_retry_s,
            ),
            bus,
            OutputLog(log_path),
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
                auto_decompress=False,
            )
        return self._session

    @property
    def base_url(self) -> str:
        return self.adapter.base_url

    @property
    def kind(self) -> str:
        return self.adapter.kind

    @property
    def state(self) -> ProcessState:
        return self.process.state

    async def _probe(self) -> bool:
        return await self.adapter.probe(self.session)

    async def ensure_ready(self, timeout_s: float | None = None) -> None:
        await self.process.ensure_ready(timeout_s)

    async def activate(self) -> None:
        await self.adapter.activate(self.session)

    @property
    def idle_timeout_s(self) -> float | None:
        return self.adapter.idle_timeout_s

    async def cancel(self, request_id: str) -> None:
        """Return once the engine stopped working on `request_id` (see `Adapter.cancel`)."""
        await self.adapter.cancel(self.session, request_id)

    async def prefetch(self) -> None:
        await self.adapter.prefetch(self.session)

    async def release(self, tier: Tier) -> None:
        await self.adapter.release(self.session, tier)

    async def stop(self) -> None:
        await self.process.stop()

    def pids(self) -> set[int]:
        return self.process.group_pids()

    def memory_held(self) -> int:
        pids = self.pids()
        return self.adapter.memory_held(self.gpu.snapshot(), pids) if pids else 0

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state.value,
            "pid": self.process.pid,
            "port": self.adapter.cfg.port,
            "url": self.base_url,
            "restarts": self.process.restarts,
            "memory_bytes": self.memory_held(),
            "last_error": self.process.last_error,
            # BACKOFF: until the next start may begin; FATAL: until the cool-down ends (None: until
            # an operator starts it); 0 otherwise
            "retry_in_s": None if (left := self.process.retry_in()) is None else round(left, 1),
            "models": self.adapter.models,
        }

    async def close(self) -> None:
        await self.process.close()
        if self._session is not None:
            await self._session.close()


def build_adapter(name: str, ctx: EngineContext, vllm_sizing: tuple[float, int] | None = None) -> Adapter:
    kind = ctx.config.engines[name].kind
    if kind == "vllm":
        frac, mml = vllm_sizing if vllm_sizing else (None, None)
        return VllmAdapter(name, ctx, gpu_fraction=frac, max_model_len=mml)
    if kind == "comfyui":
        return ComfyUIAdapter(name, ctx)
    if kind == "worker":
        return WorkerAdapter(name, ctx)
    if kind == "openwebui":
        return OpenWebUIAdapter(name, ctx)
    raise ValueError(f"unknown engine kind {kind!r}")


def enabled_engines(config: Config) -> list[str]:
    return [name for name, e in config.engines.items() if e.enabled]
