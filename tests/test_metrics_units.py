"""The pure parts behind /metrics and the logs, driven directly: the swap meter's stall accounting
(a fake clock), the traffic meter's bounded labels, the hand-kept histogram, the JSON log format."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.app import Appliance
from appliance.config import parse_config
from appliance.exposition import HistogramSeries, render
from appliance.gpu import GpuSnapshot
from appliance.histogram import Histogram
from appliance.logsetup import KEY_ID, MODEL, REQUEST_ID, configure, request_id
from appliance.metrics import MetricsExporter, TrafficCollector, exporter_for
from appliance.scheduler.swaps import SwapMeter
from appliance.traffic import TrafficMeter
from appliance.usage import UsageRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stall_counts_only_swap_time_with_no_job_running() -> None:
    clock = Clock()
    meter = SwapMeter(clock)
    clock.now += 5  # idle, nothing swapping: no stall
    swap = meter.begin("chat", "cold_start")
    clock.now += 2  # swapping, nothing running: 2 s of stall
    meter.job_started("r1", "img")
    clock.now += 3  # swapping while another model's job runs: no stall
    meter.job_stopped("r1")
    clock.now += 1  # 1 s more
    assert meter.stall_s() == pytest.approx(3.0)  # the current stretch is counted at read time
    meter.end(swap)
    clock.now += 10
    assert meter.stall_s() == pytest.approx(3.0)
    stats = meter.swaps[("chat", "cold_start")]
    assert stats.done == 1 and stats.failed == 0 and stats.seconds.total == pytest.approx(6.0)


def test_overlapping_swaps_stall_once_and_failures_are_counted() -> None:
    clock = Clock()
    meter = SwapMeter(clock)
    out = meter.begin("chat", "sleep")
    clock.now += 1
    into = meter.begin("img", "wake")
    clock.now += 1
    meter.end(out, ok=False)
    clock.now += 1
    meter.end(into)
    assert meter.stall_s() == pytest.approx(3.0)  # not 4: the overlap is one second of waiting
    assert meter.swaps[("chat", "sleep")].failed == 1
    assert meter.swapping == 0


def test_a_preempted_job_stopped_twice_counts_once_and_resumes_are_counted() -> None:
    clock = Clock()
    meter = SwapMeter(clock)
    meter.job_started("r1", "chat")
    meter.job_stopped("r1")  # preempted
    swap = meter.begin("img", "load")
    clock.now += 2
    meter.job_stopped("r1")  # the lease ends later: already not running
    meter.end(swap)
    meter.job_started("r1", "chat", resume=True)
    assert meter.stall_s() == pytest.approx(2.0)
    assert meter.resumes == {"chat": 1} and meter.running == 1
    with pytest.raises(ValueError, match="unknown swap kind"):
        meter.begin("chat", "teleport")


def test_histogram_buckets_are_cumulative_with_inf() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert h.n == 4 and h.total == pytest.approx(7.65)


def rec(route: str, model: str, status: int = 200, **kw: float) -> UsageRecord:
    return UsageRecord(route, model, None, status, wall_s=kw.get("wall", 0.2), wait_s=kw.get("wait", 0.1),
                       gpu_s=kw.get("gpu", 0.1), tokens_in=3, tokens_out=5)


def test_traffic_labels_never_take_request_controlled_values() -> None:
    t = TrafficMeter(["/v1/chat/completions"], ["chat"])
    for i in range(500):
        t.observe(rec("/v1/chat/completions", f"made-up-{i}", 404))
        t.observe(rec(f"/v1/path-{i}", "", 404))
        t.observe(rec("/v1/chat/completions", "chat", 1000 + i))
    assert set(t.times) == {("/v1/chat/completions", "other", "404"), ("other", "none", "404"),
                            ("/v1/chat/completions", "chat", "0")}
    assert set(t.output) == {"other", "none", "chat"}


def test_traffic_collector_renders_what_was_observed_and_prices_gpu_time() -> None:
    t = TrafficMeter(["/v1/chat/completions"], ["chat"])
    t.observe(rec("/v1/chat/completions", "chat", gpu=2.0), ttft_s=0.3)
    t.observe(rec("/v1/chat/completions", "chat", gpu=1.0))
    text = MetricsExporter([TrafficCollector(t, hourly_price_usd=36.0)]).render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    count = [s for s in fams["appliance_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert [(s.labels, s.value) for s in count] == [
        ({"route": "/v1/chat/completions", "model": "chat", "status": "200"}, 2.0)]
    cost = fams["appliance_cost_usd"].samples[0]
    assert cost.value == pytest.approx(3.0 * 36.0 / 3600)
    ttft = [s for s in fams["appliance_time_to_first_token_seconds"].samples if s.name.endswith("_count")]
    assert ttft[0].value == 1
    tokens = {s.labels["direction"]: s.value for s in fams["appliance_tokens"].samples}
    assert tokens == {"in": 6, "out": 10}


def test_request_id_takes_only_plain_client_tokens() -> None:
    assert request_id(b"abc-123.x:y_z") == "abc-123.x:y_z"
    for bad in (None, b"", b"has space", b"x" * 65, b'quote"', b"\xff\xfe", b"line\nbreak"):
        made = request_id(bad)
        assert len(made) == 16 and made != bad


def test_json_log_lines_carry_the_request_context() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("info", "json", out)
        tokens = [REQUEST_ID.set("req-1"), MODEL.set("chat"), KEY_ID.set("k1")]
        logging.getLogger("appliance.test").info("hello %s", "world")
        for var, tok in zip((REQUEST_ID, MODEL, KEY_ID), tokens, strict=True):
            var.reset(tok)
        logging.getLogger("appliance.test").warning("outside")
        configure("info", "text", out)
        token = REQUEST_ID.set("req-2")
        logging.getLogger("appliance.test").info("plain")
        REQUEST_ID.reset(token)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second, third = out.getvalue().splitlines()
    line = json.loads(first)
    assert line["message"] == "hello world" and line["level"] == "info" and line["logger"] == "appliance.test"
    assert (line["request_id"], line["model"], line["key_id"]) == ("req-1", "chat", "k1")
    assert line["time"].endswith("Z") and "engine" not in line
    assert "request_id" not in json.loads(second)
    assert third.endswith("INFO appliance.test [req-2]: plain")


def test_render_writes_exactly_what_generate_latest_writes() -> None:
    t = TrafficMeter(["/v1/chat/completions", "/v1/images/generations"], ["chat", 'we"ird\\model', "img"])
    for i in range(200):
        model = ("chat", 'we"ird\\model', "img", "nope")[i % 4]
        t.observe(rec("/v1/chat/completions" if i % 3 else "/v1/images/generations", model, (200, 404, 503)[i % 3],
                      wall=i / 50, wait=i / 200, gpu=i / 100), ttft_s=i / 1000 if i % 2 else None)
    registry = MetricsExporter([TrafficCollector(t, 0.5)]).registry
    assert render(registry) == generate_latest(registry)
    fams = {f.name: f for f in text_string_to_metric_families(render(registry).decode())}
    weird = [s for s in fams["appliance_request_duration_seconds"].samples if s.labels["model"] == 'we"ird\\model']
    assert weird, "a label value with a quote and a backslash survives the round trip"
    series = HistogramSeries("appliance_x_seconds", "x", ["model", "zone"])
    series.add(["a", "b"], Histogram((1.0,)))
    one = CollectorRegistry(auto_describe=False)
    one.register(Fixed([series]))
    assert render(one) == generate_latest(one)


class Fixed:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


class NvmlLike:
    """What NvmlProbe reports on a real card, without one."""

    def snapshot(self) -> GpuSnapshot:
        return GpuSnapshot(kind="nvml", name="NVIDIA GeForce RTX 3090", total_bytes=24 << 30, free_bytes=20 << 30,
                           used_bytes=4 << 30, utilization_pct=42.0, temperature_c=61.0, power_w=251.5)

    def close(self) -> None:
        return None


def test_gpu_readings_are_exported_in_base_units(tmp_path: Path) -> None:
    config = parse_config({"server": {"state_dir": str(tmp_path)}}, "test")
    app = Appliance(config, host="127.0.0.1", port=18080, probe=NvmlLike())
    text = exporter_for(app, TrafficMeter([], [])).render().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert values["appliance_gpu_utilization_ratio"] == pytest.approx(0.42)
    assert values["appliance_gpu_temperature_celsius"] == 61.0 and values["appliance_gpu_power_watts"] == 251.5
    assert values["appliance_gpu_memory_used_bytes"] == 4 << 30
    assert values["appliance_gpu_budget_bytes"] == (24 << 30) - int(1.5 * (1 << 30))
    assert values["appliance_swap_stall_seconds_total"] == 0 and values["appliance_state_disk_total_bytes"] > 0
