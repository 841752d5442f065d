"""Configuration: TOML parsed once, at the edge, into frozen typed models.

Owns every default and every validation rule. `load_config(path)` returns a `Config` or raises
`ConfigError`, whose lines each name the file and the key path
(`config.toml: engines.vllm.port: must be 1-65535, got 70000`).

It must not read the environment beyond the two documented overrides (`APPLIANCE_CONFIG` chooses the
file in the CLI; `APPLIANCE_STATE_DIR` overrides `server.state_dir`, passed in by the caller), start
anything, or exit the process.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.defaults import DRAIN_DEADLINE_S, HOST_RAM_BUDGET_GB, MAX_TOKENS_CAP, VRAM_RESERVE_GB

GIB = 1 << 30


class ConfigError(Exception):
    """One or more configuration problems, each line naming file and key path."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _port(v: int) -> int:
    if not 1 <= v <= 65535:
        raise ValueError(f"must be 1-65535, got {v}")
    return v


Port = Annotated[int, Field(strict=True)]


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: Port = 8080
    state_dir: str = "~/.local/share/appliance"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "text", "json"] = "auto"  # auto: text on a terminal, JSON lines otherwise
    max_body_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    load_deadline_s: float = Field(default=900.0, gt=0)  # how long a request may wait for its model
    keepalive_interval_s: float = Field(default=5.0, gt=0)  # SSE comments while a stream waits
    rate_limit_per_minute: int = Field(default=0, ge=0)  # per API key; 0 = unlimited
    image_url_ttl_s: int = Field(default=3600, gt=0)
    image_timeout_s: float = Field(default=600.0, gt=0)  # one ComfyUI prompt, queued and run, before a 502
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    catalog_file: str = ""  # a model catalog replacing the bundled one (appliance/data/catalog.toml)
    hourly_price_usd: float = Field(default=0.0, ge=0)  # what an hour of the box costs (plan, usage API, UI)
    tls_cert: str = ""  # PEM certificate (chain) served over HTTPS; with tls_key
    tls_key: str = ""  # its PEM private key
    plain_http: bool = False  # a non-loopback bind without TLS (behind a TLS-terminating proxy) is allowed

    _check_port = field_validator("port")(classmethod(lambda cls, v: _port(v)))

    @field_validator("host")
    @classmethod
    def _check_host(cls, v: str) -> str:
        if v in ("localhost", ""):
            return "127.0.0.1" if v == "" else v
        try:
            ipaddress.ip_address(v)
        except ValueError as exc:
            raise ValueError(f"must be an IP address or 'localhost', got {v!r}") from exc
        return v

    @model_validator(mode="after")
    def _check_tls(self) -> ServerConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            raise ValueError(f"{missing}: required key missing (tls_cert and tls_key go together)")
        return self


class GpuConfig(_Frozen):
    probe: Literal["auto", "nvml", "declared", "fake"] = "auto"
    index: int = Field(default=0, ge=0)
    declared_total_gb: float = Field(default=0.0, ge=0)  # budget when there is no NVIDIA GPU
    reserve_gb: float = Field(default=VRAM_RESERVE_GB, ge=0)  # kept free for CUDA contexts and fragmentation
    host_ram_budget_gb: float = Field(default=HOST_RAM_BUDGET_GB, ge=0)  # GiB of host RAM for slept/offloaded weights
    fake_dir: str = ""  # used with probe = "fake" (tests): where stand-ins report usage
    sample_interval_s: float = Field(default=2.0, gt=0)


class SchedulerConfig(_Frozen):
    # The starvation bound for every model; None: per kind (text and speech 60 s, image 30 s; with
    # preemption image and speech 15 s), as benchmarked (scheduler.policy.DEFAULT_MAX_WAIT_S).
    max_wait_s: float | None = Field(default=None, gt=0)
    tick_s: float = Field(default=1.0, gt=0)
    release_deadline_s: float = Field(default=30.0, gt=0)  # before a release escalates
    # A victim still busy this long past the waiting model's max_wait: resumable streams preempted, else stopped
    drain_deadline_s: float = Field(default=DRAIN_DEADLINE_S, gt=0)
    preemption: bool = False  # abort LLM streams to swap sooner, resume them after (chat and completion streams)
    turn_taking: bool = True  # co-resident engines compute one at a time (oldest waiter first)
    prefetch: bool = True  # wake a slept vLLM's weights while the model it waits for still works
    restore: bool = False  # on an idle GPU, bring back the model most likely asked for next


class MetricsConfig(_Frozen):
    enabled: bool = True  # GET /metrics (Prometheus text format)
    open_on_loopback: bool = False  # a scrape from 127.0.0.1/::1 needs no API key
    hourly_price_usd: float = Field(default=0.0, ge=0)  # what an hour of the box costs: the cost counter
    engine_metrics: bool = True  # proxy vLLM's own /metrics at /metrics/engines/NAME


class RestartPolicy(_Frozen):
    max_failures: int = Field(default=5, ge=1)  # within window_s, then FATAL
    window_s: float = Field(default=300.0, gt=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    fatal_retry_s: float = Field(default=600.0, ge=0)  # a fatal engine's cool-down; 0: until started by hand


class _EngineBase(_Frozen):
    enabled: bool = True
    autostart: bool = False  # start with the daemon instead of on the first request
    port: Port
    command: list[str] = Field(default_factory=list)  # executable prefix override
    env: dict[str, str] = Field(default_factory=dict)
    ready_timeout_s: float = Field(default=120.0, gt=0)
    stop_grace_s: float = Field(default=10.0, ge=0)
    restart: RestartPolicy = RestartPolicy()

    _check_port = field_validator("port")(classmethod(lambda cls, v: _port(v)))


class LmcacheConfig(_Frozen):
    enabled: bool = True
    chunk_size: int = Field(default=256, gt=0)
    cpu_gb: float = Field(default=8.0, ge=0)
    disk_gb: float = Field(default=0.0, ge=0)
    disk_path: str = ""  # default: <state_dir>/lmcache


class VllmEngine(_EngineBase):
    kind: Literal["vllm"]
    model: str = Field(min_length=1)
    served_model_name: str = ""
    port: Port = 8001
    ready_timeout_s: float = Field(default=900.0, gt=0)  # vLLM may take 10 minutes to answer /health
    stop_grace_s: float = Field(default=30.0, ge=0)
    gpu_memory_utilization: float | Literal["auto"] = "auto"
    max_model_len: int | Literal["auto"] = "auto"
    kv_bytes_per_token: int = Field(default=262_144, gt=0)  # Qwen2.5-32B: 64 layers x 8 KV heads x 128 x 2 x 2
    # No byte from the engine for this long ends the request with a 502 (a stream: an SSE error event).
    # A whole answer's first byte comes when it is complete: max_tokens_cap tokens must fit in it.
    idle_timeout_s: float = Field(default=300.0, gt=0)
    sleep_mode: bool = True
    quantization: str = ""
    extra_args: list[str] = Field(default_factory=list)
    lmcache: LmcacheConfig = LmcacheConfig()

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _check_util(cls, v: float | str) -> float | str:
        if isinstance(v, float | int) and not 0.05 <= float(v) <= 0.99:
            raise ValueError(f"must be between 0.05 and 0.99 or \"auto\", got {v}")
        return v


class ComfyUIEngine(_EngineBase):
    kind: Literal["comfyui"]
    path: str = "~/ComfyUI"  # checkout holding main.py
    port: Port = 8188
    ready_timeout_s: float = Field(default=180.0, gt=0)
    extra_args: list[str] = Field(default_factory=list)


# A worker's answers are whole (images, audio, non-streamed text): the idle timeout bounds one job.
WORKER_IDLE_TIMEOUT_S = {"text": 900.0, "embed": 120.0, "speech": 300.0, "diffusers": 1200.0, "stt": 600.0}


class WorkerEngine(_EngineBase):
    kind: Literal["worker"]
    worker: Literal["text", "embed", "speech", "diffusers", "stt"]
    model_path: str = Field(min_length=1)
    python: str = ""  # interpreter (the XTTS backend runs from its own virtual environment)
    device: str = "auto"
    port: Port = 8010
    ready_timeout_s: float = Field(default=60.0, gt=0)
    idle_timeout_s: float = Field(default=300.0, gt=0)  # the default depends on `worker` (see below)
    extra_args: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _idle_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "idle_timeout_s" not in data and data.get("worker") in WORKER_IDLE_TIMEOUT_S:
            data = {**data, "idle_timeout_s": WORKER_IDLE_TIMEOUT_S[data["worker"]]}
        return data


class OpenWebUIEngine(_EngineBase):
    kind: Literal["openwebui"]
    port: Port = 3000
    ready_timeout_s: float = Field(default=300.0, gt=0)
    api_key_env: str = ""  # name of an environment variable holding the gateway key for Open WebUI


EngineConfig = Annotated[
    VllmEngine | ComfyUIEngine | WorkerEngine | OpenWebUIEngine, Field(discriminator="kind")
]


class ModelConfig(_Frozen):
    engine: str = Field(min_length=1)
    modality: Literal["text", "image", "speech", "embedding", "transcription"]
    catalog: str = ""  # id in the model catalog, for sizes and downloads
    vram_gb: float = Field(default=1.0, gt=0)  # estimate until measured
    host_ram_gb: float = Field(default=0.0, ge=0)  # 0: same as vram_gb
    weights_gb: float = Field(default=0.0, ge=0)  # weights alone (vLLM prefetch); 0: from the catalog
    max_wait_s: float | None = None  # default: scheduler.max_wait_s, else per kind
    keep_alive_s: float | None = None  # None = keep until evicted
    pinned: bool = False
    queue_limit: int = Field(default=64, ge=1)
    concurrency: int = Field(default=0, ge=0)  # 0 = by modality (text 32, others 1)
    max_tokens_cap: int = Field(default=MAX_TOKENS_CAP, gt=0)
    workflow: str = ""  # ComfyUI workflow template (image models on comfyui)
    checkpoint: str = ""  # ComfyUI checkpoint file name
    # Speech: the voice names clients send (OpenAI's alloy ... verse, or any alias) -> this model's voices.
    voices: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)


class StoreConfig(_Frozen):
    url: str = ""  # "" = sqlite:///<state_dir>/data/appliance.db; or postgresql://user@host/db
    usage_flush_s: float = Field(default=1.0, gt=0, le=60)  # usage records wait at most this long in memory
    usage_batch_max: int = Field(default=5000, gt=0)  # a batch this large is written at once
    usage_retention_days: float = Field(default=90.0, ge=0)  # raw records (daily rollups stay); 0 = keep
    image_retention_h: float = Field(default=24.0, gt=0)  # generated image files
    job_retention_h: float = Field(default=168.0, gt=0)  # finished jobs and their results
    rollup_at: str = "00:15"  # UTC time of the daily rollup (HH:MM)
    backup_dir: str = ""  # "" = no scheduled backup (embedded store only)
    backup_interval_h: float = Field(default=24.0, gt=0)
    backup_keep: int = Field(default=7, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if v and not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"must be sqlite:///PATH or postgresql://..., got {v!r}")
        return v

    @field_validator("rollup_at")
    @classmethod
    def _check_time(cls, v: str) -> str:
        hh, _, mm = v.partition(":")
        if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise ValueError(f"must be HH:MM (UTC), got {v!r}")
        return v


class JobsConfig(_Frozen):
    backend: Literal["local", "kafka"] = "local"
    brokers: list[str] = Field(default_factory=list)  # kafka: host:port of the bootstrap brokers
    topic_prefix: str = "appliance-jobs."  # kafka: one topic per model, this prefix + the model id
    group: str = "appliance-jobs"  # kafka: consumer group shared by the boxes
    partitions: int = Field(default=8, ge=1, le=1024)  # kafka: partitions of a model's topic made here
    max_attempts: int = Field(default=3, ge=1)  # runs of one job before it fails for good
    workers_per_model: int = Field(default=1, ge=1)  # jobs of one model run at once on this box
    box_id: str = ""  # this box's name in the job table; "" = hostname:port
    poll_s: float = Field(default=1.0, gt=0)  # how often an idle worker looks for jobs another box queued


class VectorsConfig(_Frozen):
    backend: Literal["", "chroma", "milvus"] = ""  # "" = by profile: chroma (ultra-minimal), milvus (full)
    uri: str = ""  # chroma: a directory ("" = <state_dir>/data/chroma); milvus: http://host:19530 or a .db file
    embedding_model: str = ""  # "" = the first configured embedding model
    max_file_bytes: int = Field(default=32 * 1024 * 1024, gt=0)  # largest upload to /v1/files
    embed_batch: int = Field(default=64, ge=1, le=2048)  # chunks per embeddings call while indexing


class FleetConfig(_Frozen):
    """This box as one of several behind `appliance router` (docs/fleet.md)."""

    enabled: bool = False  # register in the shared store, heartbeat, take only the router's traffic
    advertise_url: str = ""  # the URL the router reaches this box at; "" = computed by `appliance fleet join`
    router_url: str = ""  # the router this box joined (set by `appliance fleet join`)
    token_file: str = ""  # the router's shared token (mode 0600); "" = <state_dir>/fleet.token
    heartbeat_s: float = Field(default=5.0, gt=0)  # how often the box writes its row in the registry
    expire_s: float = Field(default=15.0, gt=0)  # a row not refreshed this long is a dead box
    forget_after_h: float = Field(default=24.0, gt=0)  # a dead box's row is deleted this long after its last heartbeat

    @field_validator("advertise_url", "router_url")
    @classmethod
    def _check_http_url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")


class RouterConfig(_Frozen):
    """`appliance router`: HAProxy in front of the fleet, fed from the registry (docs/fleet.md)."""

    host: str = "0.0.0.0"  # HAProxy's public bind
    port: Port = 8443  # HAProxy's public port (TLS when tls_pem is set)
    api_port: Port = 8090  # the router's own API and fleet page (loopback; proxied by HAProxy under /api/fleet)
    haproxy_bin: str = "haproxy"
    tls_pem: str = ""  # certificate + key in one PEM file for HAProxy; "" = plain HTTP (behind another TLS proxy)
    sync_s: float = Field(default=0.5, gt=0)  # how often the registry is read
    check_interval_ms: int = Field(default=1000, ge=100)  # HAProxy health checks of the boxes
    bufsize: int = Field(default=131072, ge=16384)  # HAProxy tune.bufsize: the largest body routed by its model
    join_token_file: str = ""  # the token `appliance fleet join` must present; "" = <state_dir>/join.token
    box_ca_file: str = ""  # PEM CA that signed the boxes' certificates: https boxes are verified; "" = not verified


class LicenceConfig(_Frozen):
    accepted: list[str] = Field(default_factory=list)  # e.g. ["CPML"] for XTTS v2


class Config(_Frozen):
    profile: Literal["ultra-minimal", "full"] = "ultra-minimal"
    server: ServerConfig = ServerConfig()
    gpu: GpuConfig = GpuConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    metrics: MetricsConfig = MetricsConfig()
    engines: dict[str, EngineConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    licences: LicenceConfig = LicenceConfig()
    store: StoreConfig = StoreConfig()
    jobs: JobsConfig = JobsConfig()
    vectors: VectorsConfig = VectorsConfig()
    fleet: FleetConfig = FleetConfig()
    router: RouterConfig = RouterConfig()
    source: str = "<defaults>"  # the file this came from (not a TOML key)

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        problems: list[str] = []
        for mid, m in self.models.items():
            eng = self.engines.get(m.engine)
            if eng is None:
                known = ", ".join(sorted(self.engines)) or "none"
                problems.append(f"models.{mid}.engine: unknown engine {m.engine!r} (defined: {known})")
            elif isinstance(eng, OpenWebUIEngine):
                problems.append(f"models.{mid}.engine: {m.engine!r} is an Open WebUI engine, not a model server")
        ports: dict[int, str] = {}
        for name, eng in self.engines.items():
            if eng.port == self.server.port:
                problems.append(f"engines.{name}.port: {eng.port} is the daemon's own port (server.port)")
            if eng.port in ports:
                problems.append(f"engines.{name}.port: {eng.port} is already used by engines.{ports[eng.port]}")
            ports[eng.port] = name
        if self.store.image_retention_h * 3600 < self.server.image_url_ttl_s:
            problems.append(f"store.image_retention_h: {self.store.image_retention_h} h is shorter than "
                            f"server.image_url_ttl_s ({self.server.image_url_ttl_s} s): URLs would outlive images")
        if self.jobs.backend == "kafka" and not self.jobs.brokers:
            problems.append("jobs.brokers: required with jobs.backend = \"kafka\" (host:port of the brokers)")
        if self.profile == "full":
            if not self.store.url.startswith(("postgresql://", "postgres://")):
                problems.append("store.url: profile \"full\" needs a postgresql:// URL (the shared database)")
            if self.jobs.backend != "kafka":
                problems.append("jobs.backend: profile \"full\" needs \"kafka\" (with jobs.brokers)")
        if self.fleet.enabled:
            if not self.store.url.startswith(("postgresql://", "postgres://")):
                problems.append("fleet.enabled: needs store.url = \"postgresql://...\" (the registry, keys and jobs "
                                "the boxes share, as `appliance fleet join` writes it)")
            if not self.fleet.advertise_url and self.server.host in ("0.0.0.0", "::"):
                problems.append("fleet.advertise_url: required when server.host is a wildcard address (the URL the "
                                "router reaches this box at, as `appliance fleet join` writes it)")
        if self.fleet.expire_s <= self.fleet.heartbeat_s:
            problems.append(f"fleet.expire_s: {self.fleet.expire_s:g} s must be longer than fleet.heartbeat_s "
                            f"({self.fleet.heartbeat_s:g} s): live boxes would expire between heartbeats")
        if self.fleet.forget_after_h * 3600 <= self.fleet.expire_s:
            problems.append(f"fleet.forget_after_h: {self.fleet.forget_after_h:g} h must be longer than fleet.expire_s "
                            f"({self.fleet.expire_s:g} s): a box's row would go before it counts as dead")
        em = self.vectors.embedding_model
        if em and (em not in self.models or self.models[em].modality != "embedding"):
            problems.append(f"vectors.embedding_model: {em!r} is not a configured embedding model")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def state_path(self) -> Path:
        return Path(self.server.state_dir).expanduser()

    def models_of(self, engine: str) -> list[str]:
        return [mid for mid, m in self.models.items() if m.engine == engine]


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in err.get("loc", ())]
    # Drop the discriminator tag pydantic inserts for tagged unions (engines.vllm.vllm.port).
    if len(loc) >= 3 and loc[0] == "engines" and loc[2] in ("vllm", "comfyui", "worker", "openwebui"):
        loc = loc[:2] + loc[3:]
    path = ".".join(loc)
    kind = err.get("type", "")
    got = err.get("input")
    msg: str
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key missing"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        msg = f"must be an integer, got {got!r}"
    elif kind in ("float_type", "float_parsing"):
        msg = f"must be a number, got {got!r}"
    elif kind in ("bool_type", "bool_parsing"):
        msg = f"must be true or false, got {got!r}"
    elif kind in ("string_type",):
        msg = f"must be a string, got {got!r}"
    elif kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        msg = f"must be one of {expected}, got {got!r}"
    elif kind == "union_tag_invalid":
        msg = f"kind must be one of vllm, comfyui, worker, openwebui, got {err.get('ctx', {}).get('tag')!r}"
    elif kind == "union_tag_not_found":
        msg = "kind: required key missing (vllm, comfyui, worker or openwebui)"
    elif kind == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
    else:
        msg = str(err.get("msg", kind))
        if got is not None and not isinstance(got, dict):
            msg += f", got {got!r}"
    return path, msg


# Settings that were documented once and are gone: a file that still sets one is told why.
REMOVED = {
    ("scheduler", "footprint_headroom"): "removed: it was never applied; measured footprints are peaks that "
    "only rise, and gpu.reserve_gb keeps the margin (delete the line)",
}


def parse_config(data: Mapping[str, Any], source: str = "<defaults>", state_dir: str | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError naming `source` and each key path."""
    raw = dict(data)
    if "source" in raw:
        raise ConfigError([f"{source}: source: unknown key"])
    removed = [f"{source}: {table}.{key}: {why}" for (table, key), why in REMOVED.items()
               if isinstance(raw.get(table), Mapping) and key in raw[table]]
    if removed:
        raise ConfigError(removed)
    if state_dir:
        raw["server"] = {**dict(raw.get("server", {})), "state_dir": state_dir}
    try:
        return Config.model_validate({**raw, "source": source})
    except ValidationError as exc:
        lines: list[str] = []
        for err in exc.errors():
            path, msg = _describe(err)
            if not path and ";" in msg:  # cross-checks: one line each
                lines.extend(f"{source}: {part.strip()}" for part in msg.split(";"))
            else:
                lines.append(f"{source}: {path}: {msg}" if path else f"{source}: {msg}")
        raise ConfigError(lines) from None


def load_config(path: Path | str, state_dir: str | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: invalid TOML: {exc}"]) from None
    return parse_config(data, source=str(p), state_dir=state_dir)
