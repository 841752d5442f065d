"""ComfyUI: `main.py --listen 127.0.0.1 --port P` with input/output under the state directory
(contracts.md §3). Models load lazily on the first prompt, so activate does nothing; release asks
`/free`, which only sets flags for the worker thread: its 200 does not mean memory is free, and the
residency manager verifies the drop against the GPU probe.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from ..config import ComfyUIEngine
from ..supervisor.launcher import LaunchSpec
from .base import Adapter, EngineContext, Tier, expand


class ComfyUIAdapter(Adapter):
    kind = "comfyui"
    readiness_path = "/system_stats"
    releasable = frozenset({Tier.HOST, Tier.DISK})
    release_unloads_all = True  # /free unloads every checkpoint
    activation_timed = False  # checkpoints load with the first prompt, inside its job: nothing to time

    def __init__(self, name: str, ctx: EngineContext) -> None:
        super().__init__(name, ctx)
        assert isinstance(self.cfg, ComfyUIEngine)
        self.ccfg: ComfyUIEngine = self.cfg

    def directories(self) -> dict[str, str]:
        base = self.ctx.engine_dir(self.name)
        dirs = {k: base / k for k in ("output", "input", "temp")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        return {k: str(v) for k, v in dirs.items()}

    def model_paths_file(self) -> Path | None:
        """ComfyUI's `extra_model_paths.yaml`, pointing at the models `appliance pull` stored
        (`<state>/models/<catalog id>/{checkpoints,text_encoders,vae}`)."""
        store = self.ctx.state_dir / "models"
        lines: list[str] = []
        for mid in self.models:
            catalog = self.ctx.config.models[mid].catalog
            if not catalog or not (store / catalog).is_dir():
                continue
            lines += [f"{catalog}:", f"  base_path: {store / catalog}", "  checkpoints: checkpoints",
                      "  text_encoders: text_encoders", "  clip: text_encoders", "  vae: vae"]
        if not lines:
            return None
        path = self.ctx.engine_dir(self.name) / "extra_model_paths.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def launch_spec(self) -> LaunchSpec:
        c = self.ccfg
        d = self.directories()
        if c.command:
            prefix, cwd = list(c.command), None
        else:
            prefix, cwd = [self.ctx.python, "main.py"], expand(c.path)
        argv = [*prefix, "--listen", "127.0.0.1", "--port", str(c.port),
                "--output-directory", d["output"], "--input-directory", d["input"],
                "--temp-directory", d["temp"], "--preview-method", "none"]
        paths = self.model_paths_file()
        if paths is not None:
            argv += ["--extra-model-paths-config", str(paths)]
        argv += c.extra_args
        return LaunchSpec(self.name, argv, dict(c.env), cwd)

    async def release(self, session: aiohttp.ClientSession, tier: Tier) -> None:
        await self._post(session, "/free", json_body={"unload_models": True, "free_memory": tier is Tier.DISK})
