"""ComfyUI: `main.py --listen 127.0.0.1 --port P` with input/output under the state directory
(contracts.md §3). Models load lazily on the first prompt, so activate does nothing; release asks
`/free`, which only sets flags for the worker thread: its 200 does not mean memory is free, and the
residency manager verifies the drop against the GPU probe.

ComfyUI shares the card with the engines the scheduler places beside it, so it is launched inside
its grant (`memory_flags`): dynamic VRAM off, the card less its models' budget reserved for the
others, and no pinned host memory when what it may pin exceeds the host-RAM budget. It must not be
launched with a flag contracts.md §3.1 does not name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import psutil

from ..config import ComfyUIEngine
from ..supervisor.launcher import LaunchSpec
from .base import Adapter, EngineContext, Tier, expand

GIB = 1 << 30
DYNAMIC_VRAM_FLAGS = ("--disable-dynamic-vram", "--enable-dynamic-vram")
VRAM_LIMIT_FLAGS = ("--reserve-vram", "--vram-headroom")


PIN_SHARE = 0.9
"""ComfyUI pins host memory up to a share of the box's RAM (its `MAX_PINNED_MEMORY`, at most 90 %)."""


def memory_flags(budget_bytes: int, gpu_total_bytes: int, extra_args: Sequence[str],
                 host_ram_bytes: int = 0, host_budget_bytes: int = 0) -> list[str]:
    """The flags that keep ComfyUI inside the `budget_bytes` the scheduler grants it on a card of
    `gpu_total_bytes` (contracts.md §3.1, and its December 2026 update on dynamic VRAM):

    - `--disable-dynamic-vram`: dynamic VRAM, the default since ComfyUI PR #12658 (Feb 2026), sizes
      itself to the whole card whatever other processes hold, and pins a large share of host RAM
      at start (26 of 64 GB in issue #14396), which the host-RAM budget keeps for slept weights;
    - `--reserve-vram GB`: the card less the grant stays free for the models beside it. Written in
      decimal GB and rounded up: if ComfyUI reads the number as GiB it reserves a little more, never
      less (the contract says "GB" without saying which).

    - `--disable-pinned-memory`: when what ComfyUI may pin (`PIN_SHARE` of `host_ram_bytes`) is more
      than `host_budget_bytes` (`gpu.host_ram_budget_gb`): no flag caps its pinning by size, so it
      pins nothing and its offloaded weights stay ordinary pageable memory.

    A flag of either kind that the operator gives in `extra_args` is left to the operator. Nothing
    for the VRAM limit when the card's size or the budget is unknown.
    """
    flags: list[str] = []
    if not any(a in DYNAMIC_VRAM_FLAGS for a in extra_args):
        flags.append("--disable-dynamic-vram")
    reserve = gpu_total_bytes - budget_bytes
    if budget_bytes > 0 and reserve > 0 and not any(a in VRAM_LIMIT_FLAGS for a in extra_args):
        flags += ["--reserve-vram", f"{math.ceil(reserve / 1e7) / 100:.2f}"]
    if host_ram_bytes * PIN_SHARE > host_budget_bytes and "--disable-pinned-memory" not in extra_args:
        flags.append("--disable-pinned-memory")
    return flags


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

    def budget_bytes(self) -> int:
        """What the scheduler grants this process: the largest `vram_gb` of its checkpoints (a
        prompt runs one checkpoint; ComfyUI offloads the others when only one fits its grant)."""
        return int(max((self.ctx.config.models[m].vram_gb for m in self.models), default=0.0) * GIB)

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
        host_budget = int(self.ctx.config.gpu.host_ram_budget_gb * GIB)
        argv += memory_flags(self.budget_bytes(), self.ctx.gpu_total_bytes, c.extra_args,
                             psutil.virtual_memory().total, host_budget)
        argv += c.extra_args
        return LaunchSpec(self.name, argv, dict(c.env), cwd)

    async def release(self, session: aiohttp.ClientSession, tier: Tier) -> None:
        await self._post(session, "/free", json_body={"unload_models": True, "free_memory": tier is Tier.DISK})
