"""Prometheus exposition of the vLLM stand-in, with vLLM V1's metric names (contracts §1.4).

Owns: the counters and histograms the request path updates, and rendering them as Prometheus text
(``text/plain; version=0.0.4``) with the labels ``model_name`` and ``engine`` ("0"). Counters are
written with the ``_total`` suffix, as prometheus_client does. Must not: depend on
prometheus_client (the stand-in is aiohttp + stdlib) or read engine state by itself: the caller
passes the gauges in.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, labels: str, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} histogram")
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{self.name}_bucket{{{labels},le="{float(bound)}"}} {float(running)}')
        out.append(f'{self.name}_bucket{{{labels},le="+Inf"}} {float(self.n)}')
        out.append(f"{self.name}_count{{{labels}}} {float(self.n)}")
        out.append(f"{self.name}_sum{{{labels}}} {self.total}")


class Metrics:
    """Counters and histograms of one engine; the request path calls ``finished`` once per request."""

    def __init__(self, model_name: str) -> None:
        self.labels = f'engine="0",model_name="{model_name}"'
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0, "error": 0}
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.hists = {
            "ttft": Histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                LATENCY_BUCKETS,
            ),
            "itl": Histogram(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                LATENCY_BUCKETS,
            ),
            "e2e": Histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                LATENCY_BUCKETS,
            ),
            "queue": Histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                LATENCY_BUCKETS,
            ),
            "iteration": Histogram(
                "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", TOKEN_BUCKETS
            ),
            "prompt": Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS),
            "generation": Histogram(
                "vllm:request_generation_tokens", "Number of generation tokens processed.", TOKEN_BUCKETS
            ),
        }

    def finished(
        self,
        *,
        prompt_tokens: int,
        generation_tokens: int,
        reasons: list[str],
        queue_s: float,
        ttft_s: float | None,
        e2e_s: float,
    ) -> None:
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens
        for reason in reasons:
            self.success[reason] = self.success.get(reason, 0) + 1
        h = self.hists
        h["queue"].observe(queue_s)
        h["e2e"].observe(e2e_s)
        if ttft_s is not None:
            h["ttft"].observe(ttft_s)
            if generation_tokens > 1:
                h["itl"].observe(max(0.0, e2e_s - queue_s - ttft_s) / (generation_tokens - 1))
        h["prompt"].observe(prompt_tokens)
        h["generation"].observe(generation_tokens)
        h["iteration"].observe(prompt_tokens + generation_tokens)

    def render(
        self, *, running: int, waiting: int, kv_usage: float, sleep_level: int | None, generating: int = 0
    ) -> bytes:
        """``sleep_level``: None awake, 1 weights offloaded, 2 (or 0, paused) discard_all/paused.
        ``generating``: tokens the running requests have produced so far; vLLM's logger adds each
        engine step's generation tokens to the counter, so it moves while a request runs."""
        lb = self.labels
        out: list[str] = []

        def gauge(name: str, help_: str, value: float) -> None:
            out.extend((f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name}{{{lb}}} {float(value)}"))

        def counter(name: str, help_: str, value: float) -> None:
            out.extend(
                (
                    f"# HELP {name}_total {help_}",
                    f"# TYPE {name}_total counter",
                    f"{name}_total{{{lb}}} {float(value)}",
                )
            )

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.", running)
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage)
        out.append("# HELP vllm:engine_sleep_state Engine sleep state; awake = 0 means engine is sleeping.")
        out.append("# TYPE vllm:engine_sleep_state gauge")
        states = {
            "awake": sleep_level is None,
            "weights_offloaded": sleep_level == 1,
            "discard_all": sleep_level == 2,
        }
        for state, on in states.items():
            out.append(f'vllm:engine_sleep_state{{{lb},sleep_state="{state}"}} {1.0 if on else 0.0}')
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens + generating
        )
        counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", 0)
        counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_queries,
        )
        counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_hits,
        )
        counter("vllm:external_prefix_cache_queries", "External prefix cache queries from KV connector.", 0)
        counter("vllm:external_prefix_cache_hits", "External prefix cache hits from KV connector.", 0)
        out.append("# HELP vllm:request_success_total Count of successfully processed requests.")
        out.append("# TYPE vllm:request_success_total counter")
        for reason, count in self.success.items():
            out.append(f'vllm:request_success_total{{{lb},finished_reason="{reason}"}} {float(count)}')
        for hist in self.hists.values():
            hist.render(lb, out)
        out.append("")
        return "\n".join(out).encode()
