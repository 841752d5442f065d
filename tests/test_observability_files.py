"""The Grafana dashboard and the Prometheus configuration name only metrics the appliance exports,
parse as PromQL (through promtool, which test.sh installs from Debian's `prometheus` package), and the
alert rules fire on the series they are written for (`promtool test rules`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from appliance.metrics import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "packaging" / "grafana"
PROMETHEUS = ROOT / "packaging" / "prometheus"
NAME = re.compile(r"\b(appliance_[a-z0-9_]+)\b")
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}


def exported(series: str) -> bool:
    """`series` is a sample name /metrics writes: a family plus the suffix its type allows."""
    return any(series == family + s for family, (kind, _) in FAMILIES.items() for s in SUFFIXES[kind])


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "appliance.json").read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def promtool() -> str | None:
    return shutil.which("promtool")


def test_dashboard_is_provisionable_as_is() -> None:
    d = dashboard()
    assert "__inputs" not in d and d["uid"] and d["title"]
    datasource = yaml.safe_load((GRAFANA / "datasource.yml").read_text())["datasources"][0]
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    for p in panels:
        assert p["datasource"]["uid"] == datasource["uid"], p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == datasource["uid"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_every_dashboard_and_alert_query_names_an_exported_metric() -> None:
    for expr in dashboard_exprs() + alert_exprs():
        names = NAME.findall(expr)
        assert names or expr.startswith("up{"), expr
        for name in names:
            assert exported(name), f"{name} in {expr!r} is not a metric /metrics writes"


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    text = " ".join(dashboard_exprs())
    for needed in ("appliance_model_vram_bytes", "appliance_swaps_total", "appliance_swap_stall_seconds_total",
                   "appliance_request_residency_wait_seconds", "appliance_request_engine_seconds",
                   "appliance_request_duration_seconds_bucket", "appliance_engine_restarts_total",
                   "appliance_tokens_total", "appliance_cost_usd_total"):
        assert needed in text, needed


def test_the_name_check_rejects_what_is_not_exported() -> None:
    assert exported("appliance_swaps_total") and exported("appliance_swap_duration_seconds_bucket")
    assert not exported("appliance_swaps")  # a counter is only written with _total
    assert not exported("appliance_engine_up_total") and not exported("appliance_gpu_memory_bytes")


def test_queries_parse_as_promql_and_the_rules_load(tmp_path: Path) -> None:
    tool = promtool()
    exprs = dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    assert tool is not None, "promtool is not installed: run ./test.sh, which installs Debian's prometheus package"
    for target in (path, PROMETHEUS / "alerts.yml"):
        run = subprocess.run([tool, "check", "rules", str(target)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
    run = subprocess.run([tool, "check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_alert_rules_fire_on_the_series_they_watch() -> None:
    tool = promtool()
    assert tool is not None, "promtool is not installed: run ./test.sh, which installs Debian's prometheus package"
    run = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_scrape_config_reaches_the_appliance_and_vllm_through_it() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    paths = {job["job_name"]: job["metrics_path"] for job in config["scrape_configs"]}
    assert paths == {"appliance": "/metrics", "appliance-vllm": "/metrics/engines/vllm"}
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == ["alerts.yml"]
