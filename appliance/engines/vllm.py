"""vLLM: `vllm serve` on loopback with sleep mode and LMCache (contracts.md §1, §2).

Activate wakes a slept engine (`/wake_up`; after a level-2 sleep also `reload_weights` and
`reset_prefix_cache`); release sleeps it (`/sleep?level=1` to host RAM, `level=2` to drop weights).
The sleep routes exist only with `VLLM_SERVER_DEV_MODE=1` and `--enable-sleep-mode`.
`--gpu-memory-utilization` is given as a fraction computed by the caller from what co-resident
models leave, never vLLM's 0.9 default.
"""

from __future__ import annotations

import json

import aiohttp

from ..config import VllmEngine
from ..supervisor.launcher import LaunchSpec
from .base import Adapter, ControlError, EngineContext, Tier


class VllmAdapter(Adapter):
    kind = "vllm"
    readiness_path = "/health"  # 200 only once weights are loaded and the server serves (§1.2)

    def __init__(self, name: str, ctx: EngineContext, gpu_fraction: float | None = None,
                 max_model_len: int | None = None) -> None:
        super().__init__(name, ctx)
        assert isinstance(self.cfg, VllmEngine)
        self.vcfg: VllmEngine = self.cfg
        self.gpu_fraction = gpu_fraction
        self.max_model_len = max_model_len
        self._slept_level = 0
        self.releasable = frozenset({Tier.HOST, Tier.DISK}) if self.vcfg.sleep_mode else frozenset()
        self.supports_prefetch = self.vcfg.sleep_mode

    def served_names(self) -> list[str]:
        if self.vcfg.served_model_name:
            return [self.vcfg.served_model_name]
        return self.models or [self.name]

    def lmcache_config(self) -> dict[str, object]:
        lm = self.vcfg.lmcache
        disk_path = lm.disk_path or str(self.ctx.engine_dir(self.name) / "lmcache")
        cfg: dict[str, object] = {
            "chunk_size": lm.chunk_size,
            "local_cpu": lm.cpu_gb > 0,
            "max_local_cpu_size": lm.cpu_gb,
        }
        if lm.disk_gb > 0:
            cfg["local_disk"] = f"file://{disk_path}"
            cfg["max_local_disk_size"] = lm.disk_gb
        return cfg

    def argv(self) -> list[str]:
        v = self.vcfg
        prefix = list(v.command) or ["vllm"]
        args = [*prefix, "serve", v.model, "--host", "127.0.0.1", "--port", str(v.port),
                "--served-model-name", *self.served_names()]
        util = v.gpu_memory_utilization if v.gpu_memory_utilization != "auto" else self.gpu_fraction
        if util is not None:
            args += ["--gpu-memory-utilization", f"{float(util):.3f}"]
        mml = v.max_model_len if v.max_model_len != "auto" else self.max_model_len
        if mml is not None:
            args += ["--max-model-len", str(mml)]
        if v.sleep_mode:
            args.append("--enable-sleep-mode")
        if v.quantization:
            args += ["--quantization", v.quantization]
        if v.lmcache.enabled:
            args += ["--kv-transfer-config",
                     json.dumps({"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"})]
        args += ["--enable-prefix-caching", "--disable-uvicorn-access-log"]
        return args + list(v.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(self.vcfg.env)
        work = self.ctx.engine_dir(self.name)
        if self.vcfg.sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if self.vcfg.lmcache.enabled:
            path = work / "lmcache.yaml"
            # JSON is valid YAML; LMCache ignores LMCACHE_* variables once the file exists (§2.2).
            path.write_text(json.dumps(self.lmcache_config(), indent=2) + "\n", encoding="utf-8")
            env["LMCACHE_CONFIG_FILE"] = str(path)
            prom = work / "prometheus"
            prom.mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)  # LMCache metrics on vLLM's /metrics (§2.3)
        return env

    def launch_spec(self) -> LaunchSpec:
        self._slept_level = 0
        return LaunchSpec(self.name, self.argv(), self.environment())

    async def is_sleeping(self, session: aiohttp.ClientSession) -> bool:
        data = await self._get_json(session, "/is_sleeping")
        return bool(isinstance(data, dict) and data.get("is_sleeping"))

    async def activate(self, session: aiohttp.ClientSession) -> None:
        if not self.vcfg.sleep_mode:
            return
        if not await self.is_sleeping(session) and self._slept_level == 0:
            return
        await self._post(session, "/wake_up")
        if self._slept_level == 2:
            await self._post(session, "/collective_rpc", json_body={"method": "reload_weights"})
            await self._post(session, "/reset_prefix_cache")
        self._slept_level = 0

    async def prefetch(self, session: aiohttp.ClientSession) -> None:
        """Wake the weights alone (§1.5 `tags=weights`); activate() then wakes the KV cache. Only
        after a level-1 sleep: level 2 discarded the weights. Half awake, vLLM must not be put
        to sleep again (its allocator would unmap the KV cache it already released)."""
        if self._slept_level != 1:
            raise ControlError(f"{self.name}: only weights slept to host RAM (level 1) can be prefetched")
        await self._post(session, "/wake_up?tags=weights")

    async def release(self, session: aiohttp.ClientSession, tier: Tier) -> None:
        if not self.vcfg.sleep_mode:
            raise ControlError(f"{self.name}: sleep mode is off; the engine can only be stopped")
        level = 1 if tier is Tier.HOST else 2
        await self._post(session, f"/sleep?level={level}")
        self._slept_level = level
