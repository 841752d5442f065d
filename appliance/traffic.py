"""Request traffic as running totals for the metrics: durations by route, model and status, and what
each model produced.

Owns: `TrafficMeter`, which the gateway calls once per finished /v1 request (`observe`) and which
`metrics` reads at scrape time. Per (route, model, status) it keeps histograms of the whole request,
of the time waiting for residency (queue and swap) and of the time on the engine; per (route, model)
the time to first token of streams; per model the tokens in and out, images, audio seconds and
GPU-seconds.

Label values are bounded here, whatever the client sent: a route outside the known set becomes
`other`, a model that is not configured becomes `other` (none sent: `none`), a status outside
100-599 becomes `0`. So a client sending many distinct bad names cannot grow the series.

Must not: block, do I/O, or keep per-request records (the usage sink does); `observe` runs on the
event loop at the end of every request and costs a few dictionary lookups and bisects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .histogram import Histogram
from .usage import UsageRecord

REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OTHER = "other"
NO_MODEL = "none"


@dataclass(slots=True)
class RequestTimes:
    total: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS_S))
    wait: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS_S))
    engine: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS_S))


@dataclass(slots=True)
class ModelOutput:
    tokens_in: int = 0
    tokens_out: int = 0
    images: int = 0
    audio_s: float = 0.0
    gpu_s: float = 0.0


class TrafficMeter:
    def __init__(self, routes: Iterable[str], models: Iterable[str]) -> None:
        self._routes = frozenset(routes)
        self._models = frozenset(models)
        self.times: dict[tuple[str, str, str], RequestTimes] = {}
        self.ttft: dict[tuple[str, str], Histogram] = {}
        self.output: dict[str, ModelOutput] = {}

    def labels(self, route: str, model: str, status: int) -> tuple[str, str, str]:
        """The bounded label values for one request."""
        return (route if route in self._routes else OTHER,
                model if model in self._models else (NO_MODEL if not model else OTHER),
                str(status) if 100 <= status <= 599 else "0")

    def observe(self, rec: UsageRecord, ttft_s: float | None = None) -> None:
        key = self.labels(rec.route, rec.model, rec.status)
        times = self.times.get(key)
        if times is None:
            times = self.times[key] = RequestTimes()
        times.total.observe(rec.wall_s)
        times.wait.observe(rec.wait_s)
        times.engine.observe(rec.gpu_s)
        if ttft_s is not None:
            hist = self.ttft.get(key[:2])
            if hist is None:
                hist = self.ttft[key[:2]] = Histogram(TTFT_BUCKETS_S)
            hist.observe(ttft_s)
        out = self.output.get(key[1])
        if out is None:
            out = self.output[key[1]] = ModelOutput()
        out.tokens_in += rec.tokens_in or 0
        out.tokens_out += rec.tokens_out or 0
        out.images += rec.images
        out.audio_s += rec.audio_s
        out.gpu_s += rec.gpu_s
