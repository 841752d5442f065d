"""Prometheus metrics: custom collectors that read the owners' state at scrape time.

Owns: the metric names (`FAMILIES`, every family the appliance exports, with its type), the
collectors, and `MetricsExporter`, which renders one scrape in the Prometheus text format through
prometheus-client. Nothing here runs between scrapes: each scrape reads the GPU probe, the
supervisor (engine states and restarts), the residency manager (tiers, footprints, queues, swaps,
the stall, preemptions, resumes), the gateway's `TrafficMeter` (request durations, tokens, images,
audio, GPU-seconds) and the state directory's disk, so a value is never stale and nothing can fall
behind. Names follow Prometheus conventions: the `appliance_` prefix, base units (bytes, seconds,
ratio), `_total` on counters.

Labels take only values the configuration fixes (model ids, engine names, the known /v1 routes,
tiers, states, swap kinds) or HTTP status codes: never a name a client sent.

Must not: keep state of its own, mutate what it reads, or run a background loop.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .exposition import HistogramSeries, check_names, render
from .scheduler.profiles import KIND_OF, max_wait_for
from .scheduler.swaps import DIRECTION
from .scheduler.types import Tier
from .supervisor.states import ProcessState
from .traffic import TrafficMeter

if TYPE_CHECKING:
    from .app import Appliance

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

# name (as the text parser names the family: counters without _total) -> (type, label names)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "appliance_build_info": ("gauge", ("version", "python", "profile")),
    "appliance_start_time_seconds": ("gauge", ()),
    "appliance_gpu_memory_used_bytes": ("gauge", ()),
    "appliance_gpu_memory_total_bytes": ("gauge", ()),
    "appliance_gpu_utilization_ratio": ("gauge", ()),
    "appliance_gpu_temperature_celsius": ("gauge", ()),
    "appliance_gpu_power_watts": ("gauge", ()),
    "appliance_gpu_budget_bytes": ("gauge", ()),
    "appliance_gpu_scheduled_bytes": ("gauge", ()),
    "appliance_state_disk_free_bytes": ("gauge", ()),
    "appliance_state_disk_total_bytes": ("gauge", ()),
    "appliance_engine_up": ("gauge", ("engine",)),
    "appliance_engine_state": ("gauge", ("engine", "state")),
    "appliance_engine_restarts": ("counter", ("engine",)),
    "appliance_engine_gpu_memory_bytes": ("gauge", ("engine",)),
    "appliance_model_tier": ("gauge", ("model", "tier")),
    "appliance_model_footprint_bytes": ("gauge", ("model",)),
    "appliance_model_vram_bytes": ("gauge", ("model",)),
    "appliance_model_queue_depth": ("gauge", ("model",)),
    "appliance_model_in_flight": ("gauge", ("model",)),
    "appliance_model_oldest_wait_seconds": ("gauge", ("model",)),
    "appliance_model_max_wait_seconds": ("gauge", ("model",)),
    "appliance_swaps": ("counter", ("model", "direction", "kind")),
    "appliance_swap_failures": ("counter", ("model", "direction", "kind")),
    "appliance_swap_duration_seconds": ("histogram", ("model", "direction", "kind")),
    "appliance_swaps_in_progress": ("gauge", ()),
    "appliance_swap_stall_seconds": ("counter", ()),
    "appliance_preemptions": ("counter", ("model",)),
    "appliance_resumes": ("counter", ("model",)),
    "appliance_request_duration_seconds": ("histogram", ("route", "model", "status")),
    "appliance_request_residency_wait_seconds": ("histogram", ("route", "model", "status")),
    "appliance_request_engine_seconds": ("histogram", ("route", "model", "status")),
    "appliance_time_to_first_token_seconds": ("histogram", ("route", "model")),
    "appliance_tokens": ("counter", ("model", "direction")),
    "appliance_images": ("counter", ("model",)),
    "appliance_audio_seconds": ("counter", ("model",)),
    "appliance_gpu_seconds": ("counter", ("model",)),
    "appliance_cost_usd": ("counter", ("model",)),
}
TIERS = tuple(t.value for t in Tier)
STATES = tuple(s.value for s in ProcessState)


class ApplianceCollector(Collector):
    """The daemon's own metrics: build, GPU, disk, engines."""

    def __init__(self, appliance: Appliance) -> None:
        self.app = appliance

    def collect(self) -> Iterator[Metric]:
        app = self.app
        info = InfoMetricFamily("appliance_build", "version of the appliance daemon")
        info.add_metric([], {"version": __import__("appliance").__version__,
                             "python": platform.python_version(), "profile": app.config.profile})
        yield info
        yield GaugeMetricFamily("appliance_start_time_seconds", "when the daemon started (Unix time)",
                                value=app.started_at)
        snap = app.gpu.snapshot()
        yield GaugeMetricFamily("appliance_gpu_memory_used_bytes", "GPU memory in use (all processes)",
                                value=snap.used_bytes)
        yield GaugeMetricFamily("appliance_gpu_memory_total_bytes", "GPU memory in total (declared when no GPU)",
                                value=snap.total_bytes)
        for name, help_, value in (
            ("appliance_gpu_utilization_ratio", "GPU compute utilisation, 0-1",
             None if snap.utilization_pct is None else snap.utilization_pct / 100.0),
            ("appliance_gpu_temperature_celsius", "GPU temperature", snap.temperature_c),
            ("appliance_gpu_power_watts", "GPU power draw", snap.power_w),
        ):
            fam = GaugeMetricFamily(name, help_ + " (no sample when the probe cannot measure it)")
            if value is not None:
                fam.add_metric([], value)
            yield fam
        yield from _disk(app.state_dir)
        up = GaugeMetricFamily("appliance_engine_up", "1 when the engine is ready to serve", labels=["engine"])
        state = GaugeMetricFamily("appliance_engine_state", "1 for the engine's current supervisor state",
                                  labels=["engine", "state"])
        restarts = CounterMetricFamily("appliance_engine_restarts", "restarts after a crash or failed start",
                                       labels=["engine"])
        memory = GaugeMetricFamily("appliance_engine_gpu_memory_bytes",
                                   "GPU memory held by the engine's process group", labels=["engine"])
        for name, eng in app.engines.items():
            current = eng.state
            up.add_metric([name], 1.0 if current is ProcessState.READY else 0.0)
            for s in STATES:
                state.add_metric([name, s], 1.0 if current.value == s else 0.0)
            restarts.add_metric([name], eng.process.restarts)
            pids = eng.pids()
            memory.add_metric([name], snap.used_by(pids) if pids else 0)
        yield from (up, state, restarts, memory)


def _disk(path: Path) -> Iterator[Metric]:
    free = GaugeMetricFamily("appliance_state_disk_free_bytes", "free space on the state directory's disk")
    total = GaugeMetricFamily("appliance_state_disk_total_bytes", "size of the state directory's disk")
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        pass
    else:
        free.add_metric([], usage.free)
        total.add_metric([], usage.total)
    yield free
    yield total


class ResidencyCollector(Collector):
    """Per-model residency, queues, swaps, the stall, preemptions and resumes."""

    def __init__(self, appliance: Appliance) -> None:
        self.app = appliance
        config = appliance.config
        self.max_wait_s = {mid: max_wait_for(m, config, KIND_OF[m.modality]) for mid, m in config.models.items()}

    def collect(self) -> Iterator[Metric]:
        res = self.app.residency
        snap = res.core.snapshot()
        now = res.swaps.now()
        yield GaugeMetricFamily("appliance_gpu_budget_bytes", "GPU memory the scheduler may fill (total - reserve)",
                                value=snap.vram_budget_bytes)
        yield GaugeMetricFamily("appliance_gpu_scheduled_bytes", "GPU memory the scheduler counts as taken",
                                value=snap.vram_used_bytes)
        tier = GaugeMetricFamily("appliance_model_tier", "1 for the tier the model's weights are in",
                                 labels=["model", "tier"])
        footprint = GaugeMetricFamily("appliance_model_footprint_bytes",
                                      "the model's GPU footprint (measured peak, else the configured estimate)",
                                      labels=["model"])
        vram = GaugeMetricFamily("appliance_model_vram_bytes", "the model's footprint while it is in VRAM, else 0",
                                 labels=["model"])
        depth = GaugeMetricFamily("appliance_model_queue_depth", "requests waiting for the model", labels=["model"])
        running = GaugeMetricFamily("appliance_model_in_flight", "requests running on the model", labels=["model"])
        oldest = GaugeMetricFamily("appliance_model_oldest_wait_seconds",
                                   "how long the model's oldest queued request has waited (0: none)", labels=["model"])
        max_wait = GaugeMetricFamily("appliance_model_max_wait_seconds", "the model's starvation bound (max_wait_s)",
                                     labels=["model"])
        for mid, view in snap.models.items():
            for t in TIERS:
                tier.add_metric([mid, t], 1.0 if view.tier.value == t else 0.0)
            footprint.add_metric([mid], view.footprint_bytes)
            vram.add_metric([mid], view.footprint_bytes if view.tier is Tier.VRAM else 0)
            depth.add_metric([mid], view.queued)
            running.add_metric([mid], view.in_flight)
            oldest.add_metric([mid], 0.0 if view.oldest_arrival is None else max(0.0, now - view.oldest_arrival))
            max_wait.add_metric([mid], self.max_wait_s[mid])
        for mid in sorted(res.cpu_models):  # CPU workers: not scheduled, but their tier is known
            current = res.tier(mid)
            for t in TIERS:
                tier.add_metric([mid, t], 1.0 if current == t else 0.0)
        yield from (tier, footprint, vram, depth, running, oldest, max_wait)
        yield from self._swaps(list(snap.models))

    def _swaps(self, models: list[str]) -> Iterator[Metric]:
        res = self.app.residency
        meter = res.swaps
        labels = ["model", "direction", "kind"]
        count = CounterMetricFamily("appliance_swaps", "swaps finished (failed ones included)", labels=labels)
        failed = CounterMetricFamily("appliance_swap_failures", "swaps that failed", labels=labels)
        seconds = HistogramSeries("appliance_swap_duration_seconds",
                                        "how long a swap took (a release until the memory was verified free)",
                                        labels=labels)
        for (model, kind), stats in sorted(meter.swaps.items()):
            key = [model, DIRECTION[kind], kind]
            count.add_metric(key, stats.done)
            failed.add_metric(key, stats.failed)
            seconds.add(key, stats.seconds)
        yield from (count, failed, seconds)
        yield GaugeMetricFamily("appliance_swaps_in_progress", "swaps under way now", value=meter.swapping)
        yield CounterMetricFamily("appliance_swap_stall_seconds",
                                  "time a swap was in progress while no job ran on the GPU", value=meter.stall_s())
        pre = CounterMetricFamily("appliance_preemptions", "streams preempted for another model", labels=["model"])
        resumes = CounterMetricFamily("appliance_resumes", "preempted requests dispatched again", labels=["model"])
        for model in models:  # every scheduled model, 0 until it happens
            pre.add_metric([model], res.preemptions.get(model, 0))
            resumes.add_metric([model], meter.resumes.get(model, 0))
        yield pre
        yield resumes


class TrafficCollector(Collector):
    """Request durations and what the models produced, from the gateway's `TrafficMeter`."""

    def __init__(self, traffic: TrafficMeter, hourly_price_usd: float) -> None:
        self.traffic = traffic
        self.price_per_s = hourly_price_usd / 3600.0

    def collect(self) -> Iterator[Metric]:
        t = self.traffic
        labels = ["route", "model", "status"]
        total = HistogramSeries("appliance_request_duration_seconds",
                                      "whole /v1 request, first byte in to last byte out", labels=labels)
        wait = HistogramSeries("appliance_request_residency_wait_seconds",
                                     "time waiting for the model to be resident (queue and swaps)", labels=labels)
        engine = HistogramSeries("appliance_request_engine_seconds",
                                       "time holding the model's lease (on the engine)", labels=labels)
        for key, times in sorted(t.times.items()):
            lv = list(key)
            total.add(lv, times.total)
            wait.add(lv, times.wait)
            engine.add(lv, times.engine)
        yield from (total, wait, engine)
        ttft = HistogramSeries("appliance_time_to_first_token_seconds",
                                     "streams: request start to the first content chunk", labels=["route", "model"])
        for (route, model), h in sorted(t.ttft.items()):
            ttft.add([route, model], h)
        yield ttft
        tokens = CounterMetricFamily("appliance_tokens", "tokens read (in) and generated (out)",
                                     labels=["model", "direction"])
        images = CounterMetricFamily("appliance_images", "images generated", labels=["model"])
        audio = CounterMetricFamily("appliance_audio_seconds",
                                    "seconds of audio synthesised (speech) or transcribed (speech to text)",
                                    labels=["model"])
        gpu = CounterMetricFamily("appliance_gpu_seconds", "seconds requests held their model's GPU lease",
                                  labels=["model"])
        cost = CounterMetricFamily("appliance_cost_usd", "GPU-seconds priced at metrics.hourly_price_usd",
                                   labels=["model"])
        for model, out in sorted(t.output.items()):
            tokens.add_metric([model, "in"], out.tokens_in)
            tokens.add_metric([model, "out"], out.tokens_out)
            images.add_metric([model], out.images)
            audio.add_metric([model], out.audio_s)
            gpu.add_metric([model], out.gpu_s)
            cost.add_metric([model], out.gpu_s * self.price_per_s)
        yield from (tokens, images, audio, gpu, cost)


class MetricsExporter:
    """One registry per daemon; `render()` is one scrape (`exposition.render`: generate_latest's bytes)."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for c in collectors:
            self.registry.register(c)

    def render(self) -> bytes:
        return render(self.registry)


for _name, (_kind, _labels) in FAMILIES.items():  # so exposition.render may skip escaping names
    check_names(_name, (*_labels, "le"))


def exporter_for(appliance: Appliance, traffic: TrafficMeter) -> MetricsExporter:
    return MetricsExporter([ApplianceCollector(appliance), ResidencyCollector(appliance),
                            TrafficCollector(traffic, appliance.config.metrics.hourly_price_usd)])

