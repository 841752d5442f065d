"""Composition root: build every long-lived object from a Config, and the startup/shutdown order.

Startup: state directories, the fleet router's token (fleet.enabled; a missing token file stops the
start with one line), the store (opened and migrated: a store that cannot be used stops the start
with one line), the box's id (fleet.identity), reap engine groups a previous daemon left behind (pid
file), GPU probe, engines, residency manager, the fleet heartbeat (fleet.enabled), the usage writer,
maintenance, then the autostart engines (in the background: the API answers while they load).
Shutdown (one ordered function): stop admitting work, remove this box's registry row, let streams
drain up to a deadline, stop every engine in stages, close the probe, write the last usage records,
close the store.

Readiness (`Appliance.readiness`, owned here and changed only through `mark_serving`, `drain`,
`stopping` and `shutdown`): "starting" until the daemon serves, "ready", "draining" after `drain()` (an operator's
`POST /api/drain`: no new /v1 work or jobs, in-flight work finishes), "stopping" once shutdown began
(`stopping()`, at the stop signal, before the open requests are let finish).
`accepting` (new /v1 work and jobs admitted) is true while starting or ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from .catalog import Catalog, load_catalog
from .config import Config, VllmEngine
from .downloads import Downloads
from .engine_keys import EngineKeys
from .engines.base import EngineContext
from .engines.engine import Engine, build_adapter, enabled_engines
from .events import EventBus
from .fleet.heartbeat import Heartbeat
from .fleet.identity import box_identity, legacy_box_id
from .fleet.token import read_token
from .gateway.images import ImageStore
from .gpu import GIB_BYTES, DeclaredProbe, FakeGpuProbe, GpuProbe, NvmlProbe, detect_probe
from .jobs import build_queue
from .scheduler.loop import ResidencyManager
from .scheduler.profiles import weights_bytes
from .scheduler.sizing import size_vllm
from .store import open_store
from .store.maintenance import Maintenance
from .store.state_doc import StoreStateDoc
from .store.usage_sink import StoreUsageSink
from .supervisor.launcher import Launcher, OsLauncher, PidFile

log = logging.getLogger("appliance")
READINESS = ("starting", "ready", "draining", "stopping")
VLLM_OVERHEAD_BYTES = 1 << 30  # CUDA context, graphs and the activation peak vLLM profiles at start


def make_probe(config: Config) -> GpuProbe:
    g = config.gpu
    declared = int(g.declared_total_gb * GIB_BYTES)
    if g.probe == "fake":
        return FakeGpuProbe(Path(g.fake_dir).expanduser(), declared or 24 * GIB_BYTES)
    if g.probe == "declared":
        return DeclaredProbe(declared, reason="gpu.probe = declared")
    if g.probe == "nvml":
        return NvmlProbe(g.index)
    return detect_probe(declared, g.index)


def vllm_sizing(config: Config, engine: str, gpu_total_bytes: int,
                catalog: Catalog | None = None) -> tuple[float, int] | None:
    """`--gpu-memory-utilization` and `--max-model-len` for a vLLM engine whose config says "auto".

    vLLM takes exactly the VRAM the scheduler budgets for its model (`models.X.vram_gb`: weights,
    KV cache and overhead), so everything else stays free for co-resident models, instead of
    vLLM's 0.9 default. The length is what that KV budget holds (capped by a configured length).
    None when there is nothing to size (no GPU, not a vLLM engine, both values given). The weights
    come from `models.X.weights_gb`, else from `catalog`.
    """
    eng = config.engines[engine]
    if not isinstance(eng, VllmEngine) or gpu_total_bytes <= 0:
        return None
    if eng.gpu_memory_utilization != "auto" and eng.max_model_len != "auto":
        return None
    models = [config.models[m] for m in config.models_of(engine)]
    budget = int(max((m.vram_gb for m in models), default=0.9 * gpu_total_bytes / GIB_BYTES) * GIB_BYTES)
    weights = max((weights_bytes(m, catalog) for m in models), default=0)
    if weights <= 0:
        weights = int(budget * 0.75)  # unknown model: assume a quarter of the budget for KV cache
    reserve = int(config.gpu.reserve_gb * GIB_BYTES)
    try:
        sized = size_vllm(
            gpu_total_bytes=gpu_total_bytes,
            coresident_bytes=max(0, gpu_total_bytes - reserve - budget),
            reserve_bytes=reserve,
            weights_bytes=weights,
            kv_bytes_per_token=eng.kv_bytes_per_token,
            overhead_bytes=VLLM_OVERHEAD_BYTES,
            model_max_len=eng.max_model_len if isinstance(eng.max_model_len, int) else None,
        )
    except ValueError as exc:
        log.warning("vLLM engine %s: %s; leaving vLLM's own defaults", engine, exc)
        return None
    return sized.gpu_memory_utilization, sized.max_model_len


class Appliance:
    def __init__(self, config: Config, *, host: str, port: int, probe: GpuProbe | None = None,
                 launcher: Launcher | None = None, hub_endpoint: str | None = None,
                 hub_token: str | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.state_dir = config.state_path()
        for sub in ("run", "logs", "engines", "data"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        # The fleet router's token (fleet.enabled): read once, here; TokenError stops the start with one line.
        self.fleet_token = read_token(config) if config.fleet.enabled else ""
        self.store = open_store(config.store.url, self.state_dir)  # StoreError: one line, nothing started
        self.bus = EventBus()
        self.gpu = probe or make_probe(config)
        self.pidfile = PidFile(self.state_dir / "run" / "engines.json")
        self.launcher = launcher or OsLauncher(self.pidfile)
        gateway_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        scheme = "https" if config.server.tls_cert else "http"  # the daemon serves only TLS when it has a cert
        catalog = load_catalog(config.server.catalog_file or None)
        total = self.gpu.snapshot().total_bytes
        self.ctx = EngineContext(config, self.state_dir, f"{scheme}://{gateway_host}:{port}", catalog=catalog,
                                 gpu_total_bytes=total,
                                 engine_key=EngineKeys(self.store, self.state_dir).key_for)  # fmt: skip
        self.engines: dict[str, Engine] = {
            name: Engine(build_adapter(name, self.ctx, vllm_sizing(config, name, total, catalog)), self.launcher,
                         self.bus, self.gpu)
            for name in enabled_engines(config)
        }
        self.residency = ResidencyManager(
            config, self.engines, self.gpu, self.bus, self.state_dir, catalog=catalog,
            state_docs=(StoreStateDoc(self.store, "footprints"), StoreStateDoc(self.store, "transitions")))
        self.downloads = Downloads(catalog, self.state_dir / "models", self.bus, set(config.licences.accepted),
                                   hub_endpoint, hub_token)
        self.usage = StoreUsageSink(self.store, config.store.usage_flush_s, config.store.usage_batch_max)
        data_dir = self.state_dir / "data"
        self.images = ImageStore(data_dir / "images", data_dir / "image_url.key", config.server.image_url_ttl_s,
                                 keep_s=config.store.image_retention_h * 3600)
        self.box_id, made = box_identity(config, self.state_dir)  # the jobs' owner and the fleet's box id
        if made:  # an older appliance ran its jobs as hostname:port: take back what it left running
            for job in self.store.jobs_requeue(legacy_box_id(port)):
                log.warning("job %s (%s): re-queued, it was running under this box's former name", job.id, job.model)
        self.job_queue = build_queue(config, self.store, self.box_id)  # JobsError: one line, nothing started
        self.heartbeat: Heartbeat | None = None
        if config.fleet.enabled:
            from .fleet.summary import residency_summary

            self.heartbeat = Heartbeat(
                self.store, box_id=self.box_id, url=config.fleet.advertise_url or f"{scheme}://{gateway_host}:{port}",
                version=__import__("appliance").__version__, interval_s=config.fleet.heartbeat_s,
                expire_s=config.fleet.expire_s, summary=lambda: residency_summary(self),
                readiness=lambda: self.readiness, max_attempts=config.jobs.max_attempts)
        self.maintenance = Maintenance(self.store, config.store, jobs_dir=data_dir / "jobs",
                                       image_sweep=lambda: self.images.sweep(force=True),
                                       forget_boxes_after_s=config.fleet.forget_after_h * 3600)
        self._readiness = "starting"
        self._background: set[asyncio.Task[None]] = set()

    @property
    def readiness(self) -> str:
        """"starting" | "ready" | "draining" | "stopping" (see the module docstring)."""
        return self._readiness

    @property
    def accepting(self) -> bool:
        """Whether new /v1 work and jobs are admitted (not while draining or stopping)."""
        return self._readiness in ("starting", "ready")

    def mark_serving(self) -> None:
        """The daemon serves (its start-up finished): "starting" becomes "ready"; a drain stays."""
        if self._readiness == "starting":
            self._readiness = "ready"

    def refusal(self) -> str:
        """Why new work is refused while not `accepting` (the 503's message)."""
        if self._readiness == "draining":
            return "this box is draining (POST /api/drain): it takes no new work; send it to another box"
        return "the appliance is shutting down"

    def stopping(self) -> None:
        """The daemon is stopping (its stop signal): no new work; called from a signal handler."""
        self._readiness = "stopping"

    def drain(self) -> bool:
        """Stop admitting new work (readiness "draining"); False when already draining or stopping."""
        if self._readiness in ("draining", "stopping"):
            return False
        self._readiness = "draining"
        log.info("draining: new /v1 work and jobs are refused; in-flight work finishes")
        return True

    def gpu_note(self) -> str:
        if isinstance(self.gpu, DeclaredProbe):
            return f"{self.gpu.reason}; using a declared budget of {self.gpu.total_bytes / GIB_BYTES:.1f} GiB"
        return ""

    async def startup(self) -> None:
        for line in self.pidfile.reap_leftovers():
            log.warning("reaped: %s", line)
        note = self.gpu_note()
        if note:
            log.warning("GPU: %s", note)
        self.residency.start()
        if self.heartbeat is not None:
            self.heartbeat.start()  # registered as "starting" (the router holds traffic until "ready")
        self.usage.start()
        self.maintenance.start()
        for name, eng in self.engines.items():
            if self.config.engines[name].autostart:
                task = asyncio.ensure_future(eng.process.start())
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def shutdown(self) -> None:
        self.stopping()
        if self.heartbeat is not None:
            await self.heartbeat.close()  # the row goes: the router drops this box at once
        self.maintenance.stop()
        await self.residency.close()
        await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)
        self.pidfile.forget_all()
        self.gpu.close()
        await self.usage.close()
        self.store.close()

    def status(self) -> dict[str, Any]:
        snap = self.gpu.snapshot()
        gpu = snap.as_dict()
        note = self.gpu_note()
        if note:
            gpu["note"] = note
        return {
            "version": __import__("appliance").__version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "profile": self.config.profile,
            "config": self.config.source,
            "gpu": gpu,
            "engines": [e.status() for e in self.engines.values()],
            "models": [
                {"id": mid, "catalog": m.catalog, "engine": m.engine, "modality": m.modality,
                 "tier": self.residency.tier(mid)}
                for mid, m in self.config.models.items()
            ],
            "residency": self.residency.snapshot(),
            "store": {"backend": self.store.backend, "url": self.store.describe(),
                      "migrations": len(self.store.migrations())},
            "jobs": {**self.job_queue.describe(), "box_id": self.box_id},
            "maintenance": self.maintenance.jobs(),
        }

    async def start_engine(self, name: str) -> None:
        await self.engines[name].process.start()

    async def stop_engine(self, name: str) -> None:
        await self.engines[name].stop()
