"""The one calibration table of the simulator: sizes, service times and swap costs.

Owns: every number the simulator assumes about the box, with defaults from published
figures (marked [U] where unverified): a 24 GiB card (an RTX 3090)
less the daemon's default 1.5 GiB reserve, a 32B 4-bit LLM of 19.3 GB (prefill about 1,000 tokens/s, decode about 33
tokens/s at batch 1, sublinear batching, a KV cache of about 9k tokens), the SD3.5 fp8
set of 14.8 GB at about 6 s an image, XTTS v2 at 1.9 GB with a real-time factor of 0.38,
wake from host RAM 0.3 s + size / 24 GB/s (for the LLM in two stages when prefetched:
its weights, then 0.1 s to map its KV cache [U]), release 0.05 s, a cold vLLM start of 90 s,
loads from disk at 5 GB/s, and the shipped configuration's defaults (`appliance/defaults.py`:
32 GiB of host RAM for slept weights, answers capped at 4,096 tokens). `load_calibration`
replaces any of them from a JSON or TOML file of a real box's measurements (same field names,
nested by section).

Must not: simulate anything; it only answers "how long" and "how big".
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from appliance.defaults import HOST_RAM_BUDGET_GB, MAX_TOKENS_CAP, VRAM_RESERVE_GB
from appliance.scheduler.policy import default_max_wait_s
from appliance.scheduler.types import GB, ModelKind

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class ModelCalibration:
    """Size and transition costs of one model on the box.

    size_bytes: the weights, what a wake or a load moves. vram_bytes: what the model holds
    while resident (weights plus KV cache, activations, workspace); 0 means "compute it":
    for the LLM, weights plus its KV cache (`LlmCalibration.kv_tokens` x `kv_bytes_per_token`).
    staged_wake_s: the second stage of a staged wake (vLLM /wake_up?tags=kv_cache after its
    weights came back with tags=weights): the KV cache is mapped, nothing is copied. 0: the
    model has no staged wake, so it cannot be prefetched.
    """

    id: str
    kind: ModelKind
    size_bytes: int
    wake_fixed_s: float
    release_s: float
    cold_start_s: float
    load_fixed_s: float
    stop_s: float
    concurrency: int
    max_wait_s: float  # the policy's max_wait for this model (a setting, kept here with the model)
    vram_bytes: int = 0
    staged_wake_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LlmCalibration:
    prefill_tps: float = 1000.0
    decode_tps: float = 33.0
    batch_exponent: float = 0.8  # aggregate decode rate grows as batch ** exponent (sublinear)
    kv_tokens: int = 9000
    kv_bytes_per_token: int = 262_144  # Qwen2.5-32B: 64 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes
    max_tokens_cap: int = MAX_TOKENS_CAP  # the shipped models.NAME.max_tokens_cap
    prompt_median: float = 500.0
    prompt_sigma: float = 1.0
    output_median: float = 300.0
    output_sigma: float = 1.0
    resume_prefill_speedup: float = 5.0  # LMCache / prefix cache make re-prefill this much faster
    chars_per_token: float = 4.0


@dataclass(frozen=True, slots=True)
class ImageCalibration:
    seconds: float = 6.0
    jitter: float = 0.10  # uniform +/- this fraction


@dataclass(frozen=True, slots=True)
class SpeechCalibration:
    real_time_factor: float = 0.38
    chars_per_audio_s: float = 15.0
    chars_median: float = 200.0
    chars_sigma: float = 0.5


def _default_models() -> tuple[ModelCalibration, ...]:
    return (
        ModelCalibration(
            "llm", ModelKind.LLM, int(19.3 * GB), 0.3, 0.05, 90.0, 1.5, 3.0, 16, default_max_wait_s(ModelKind.LLM),
            staged_wake_s=0.1,
        ),
        ModelCalibration(
            "image", ModelKind.IMAGE, int(14.8 * GB), 0.3, 0.05, 18.0, 0.3, 2.0, 1, default_max_wait_s(ModelKind.IMAGE)
        ),
        ModelCalibration(
            "speech", ModelKind.SPEECH, int(1.9 * GB), 0.1, 0.05, 12.0, 0.1, 1.0, 1,
            default_max_wait_s(ModelKind.SPEECH), vram_bytes=int(3.4 * GB),
        ),
    )


@dataclass(frozen=True, slots=True)
class Calibration:
    vram_total_bytes: int = 24 * GIB  # an RTX 3090: 24 GiB, 25.8 GB
    vram_reserve_bytes: int = int(VRAM_RESERVE_GB * GIB)  # the shipped gpu.reserve_gb
    host_budget_bytes: int = int(HOST_RAM_BUDGET_GB * GIB)  # the shipped gpu.host_ram_budget_gb (GiB)
    host_bandwidth: float = 24.0 * GB  # pinned host RAM -> GPU, bytes/s
    disk_bandwidth: float = 5.0 * GB  # naive safetensors path from page cache/NVMe, bytes/s
    ollama_load_fixed_s: float = 1.0  # runner process start before weights stream in
    ollama_unload_s: float = 1.0  # runner stop plus VRAM convergence (Ollama: 0.5-1.5 s)
    gpu_time_sliced: bool = True  # co-resident engines share one GPU's compute
    models: tuple[ModelCalibration, ...] = field(default_factory=_default_models)
    llm: LlmCalibration = field(default_factory=LlmCalibration)
    image: ImageCalibration = field(default_factory=ImageCalibration)
    speech: SpeechCalibration = field(default_factory=SpeechCalibration)

    @property
    def vram_budget_bytes(self) -> int:
        return self.vram_total_bytes - self.vram_reserve_bytes

    def model(self, model_id: str) -> ModelCalibration:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(model_id)

    def vram_bytes(self, model_id: str) -> int:
        """Resident footprint; the LLM's is its weights plus the KV cache it is sized for."""
        m = self.model(model_id)
        if m.vram_bytes:
            return m.vram_bytes
        if m.kind is ModelKind.LLM:
            return m.size_bytes + self.llm.kv_tokens * self.llm.kv_bytes_per_token
        return m.size_bytes

    def wake_s(self, model_id: str) -> float:
        m = self.model(model_id)
        return m.wake_fixed_s + m.size_bytes / self.host_bandwidth

    def prefetch_bytes(self, model_id: str) -> int:
        """What a prefetch brings back (the weights), for a model with a staged wake; else 0."""
        m = self.model(model_id)
        return m.size_bytes if m.staged_wake_s > 0 and m.size_bytes < self.vram_bytes(model_id) else 0

    def disk_load_s(self, model_id: str) -> float:
        m = self.model(model_id)
        return m.load_fixed_s + m.size_bytes / self.disk_bandwidth

    def ollama_load_s(self, model_id: str) -> float:
        return self.ollama_load_fixed_s + self.model(model_id).size_bytes / self.disk_bandwidth

    def release_and_wake_s(self) -> float:
        """One release and one wake of every model: the swap term of the starvation bound."""
        return sum(m.release_s + self.wake_s(m.id) for m in self.models)


def load_calibration(path: Path) -> Calibration:
    """Defaults overridden by a JSON or TOML file; unknown keys are an error naming the key."""
    text = path.read_text()
    data: dict[str, Any] = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    return calibration_from_mapping(data, source=str(path))


def calibration_from_mapping(data: dict[str, Any], source: str = "<mapping>") -> Calibration:
    base = Calibration()
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("llm", "image", "speech"):
            section = getattr(base, key)
            top[key] = _override(section, value, f"{source}: {key}")
        elif key == "models":
            top[key] = _override_models(base.models, value, source)
        elif key in {f.name for f in fields(Calibration)}:
            top[key] = value
        else:
            raise ValueError(f"{source}: unknown calibration key {key!r}")
    return replace(base, **top)


def _override(section: Any, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(section)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    return replace(section, **values)


def _override_models(
    models: tuple[ModelCalibration, ...], values: dict[str, dict[str, Any]], source: str
) -> tuple[ModelCalibration, ...]:
    by_id = {m.id: m for m in models}
    for model_id, overrides in values.items():
        if model_id not in by_id:
            raise ValueError(f"{source}: models.{model_id} is not a simulated model")
        by_id[model_id] = _override(by_id[model_id], overrides, f"{source}: models.{model_id}")
    return tuple(by_id[m.id] for m in models)
