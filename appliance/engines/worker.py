"""The appliance's own workers (services/): one model per process, a small HTTP control protocol:
`/load` (load or wake), `/offload` (weights to pinned host RAM), `/unload` (drop weights), `/stats`, and
`/cancel` (stop a data request the gateway abandoned; answered once the worker let go of it).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import aiohttp

from ..catalog import CatalogError
from ..config import WorkerEngine
from ..supervisor.launcher import LaunchSpec
from .base import Adapter, ControlError, EngineContext, Tier

log = logging.getLogger("appliance.engines")

ACCEPT_CPML = "--accept-cpml"  # XTTS v2's licence: passed only when `licences.accepted` holds "CPML"


def _services_root() -> str:
    spec = importlib.util.find_spec("services")  # locate without importing the worker code
    if spec is None or spec.origin is None:
        raise RuntimeError("the 'services' package (the appliance's workers) is not installed")
    return str(Path(spec.origin).parent.parent)


class WorkerAdapter(Adapter):
    kind = "worker"
    readiness_path = "/health"
    releasable = frozenset({Tier.HOST, Tier.DISK})

    def __init__(self, name: str, ctx: EngineContext) -> None:
        super().__init__(name, ctx)
        assert isinstance(self.cfg, WorkerEngine)
        self.wcfg: WorkerEngine = self.cfg

    def launch_spec(self) -> LaunchSpec:
        w = self.wcfg
        prefix = list(w.command) or [w.python or self.ctx.python, "-m", f"services.{w.worker}"]
        model_id = self.models[0] if self.models else self.name
        argv = [*prefix, "--host", "127.0.0.1", "--port", str(w.port), "--model-id", model_id,
                "--model-path", os.path.expanduser(w.model_path), "--device", w.device,
                *self.catalog_args(model_id), *self.voice_args(model_id), *w.extra_args]
        env = {"APPLIANCE_STATE_DIR": str(self.ctx.state_dir), **w.env}
        if not w.command:
            root = _services_root()
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        return LaunchSpec(self.name, argv, env)

    def missing_weights(self) -> bool:
        """A `model_path` that names a directory or file (absolute, `~` or `./`) which is not there; other
        values name a model a worker resolves itself (a voice or embedding model inside a package)."""
        path = self.wcfg.model_path
        if not path.startswith(("/", "~", "./")):
            return False
        return not Path(os.path.expanduser(path)).exists()

    def catalog_args(self, model_id: str) -> list[str]:
        """The catalog's flags for this model; licence flags only once the operator accepted it."""
        args: list[str] = []
        entry = self.ctx.config.models.get(model_id)
        if entry is not None and entry.catalog:
            try:
                item = self.ctx.model_catalog().get(entry.catalog)
            except (CatalogError, KeyError):
                item = None
            if item is not None:
                args = list(item.worker_args)
                if item.image_size and self.wcfg.worker == "diffusers":
                    args += ["--default-size", item.image_size]
        args = [a for a in args if a != ACCEPT_CPML]
        if self.wcfg.worker == "speech" and "CPML" in self.ctx.config.licences.accepted:
            args.append(ACCEPT_CPML)
        return args

    def voice_args(self, model_id: str) -> list[str]:
        """`models.ID.voices` as the speech worker's `--voice NAME=VOICE` flags."""
        entry = self.ctx.config.models.get(model_id)
        if self.wcfg.worker != "speech" or entry is None:
            return []
        return [arg for name, voice in sorted(entry.voices.items()) for arg in ("--voice", f"{name}={voice}")]

    async def activate(self, session: aiohttp.ClientSession) -> None:
        await self._post(session, "/load", timeout_s=self.wcfg.ready_timeout_s * 10)

    async def release(self, session: aiohttp.ClientSession, tier: Tier) -> None:
        await self._post(session, "/offload" if tier is Tier.HOST else "/unload")

    async def cancel(self, session: aiohttp.ClientSession, request_id: str) -> None:
        """`POST /cancel`: the worker answers once its model thread has let go of the request (it
        stops between two units of work), or at once when the request is not there (finished, or
        not arrived yet: then it never runs). Bounded by the idle timeout: a worker that cannot
        answer within it is hung, which the supervisor's probes deal with."""
        try:
            await self._post(session, "/cancel", json_body={"request_id": request_id},
                             timeout_s=self.wcfg.idle_timeout_s)
        except ControlError as exc:
            log.warning("%s: could not confirm the cancellation of request %s: %s", self.name, request_id, exc)

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, object]:
        data = await self._get_json(session, "/stats")
        return data if isinstance(data, dict) else {}
