"""The full profile on real servers: the daemon on PostgreSQL and Kafka (a Tansu broker), and the
one-line refusals when either does not answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from backing_services import pg_schema_url
from daemon_harness import free_port, to_toml

from .conftest import OFFLINE, ROOT, full_config, launch, wait_until


def full_profile(store_url: str, broker: str) -> dict[str, Any]:
    doc = full_config()
    doc["profile"] = "full"
    doc["store"] = {"url": store_url}
    doc["jobs"] = {"backend": "kafka", "brokers": [broker], "topic_prefix": f"fp{free_port()}."}
    return doc


def test_full_profile_runs_jobs_on_postgresql_and_kafka(tmp_path: Path, pg_database: str, kafka_broker: str) -> None:
    gw = launch(tmp_path, full_profile(pg_schema_url(pg_database), kafka_broker), keys={"user": False, "admin": True})
    try:
        status = gw.status()
        assert status["profile"] == "full" and status["store"]["backend"] == "postgresql"
        assert status["jobs"]["backend"] == "kafka" and status["jobs"]["brokers"] == [kafka_broker]
        body = {"route": "/v1/audio/speech", "model": "voice", "input": "over kafka", "voice": "alloy"}
        job = gw.request("POST", "/v1/jobs", body).json()

        def done() -> dict[str, Any] | None:
            view: dict[str, Any] = gw.request("GET", f"/v1/jobs/{job['id']}").json()
            return view if view["status"] in ("succeeded", "failed") else None
        view = wait_until(done, 90, "the job over Kafka")
        assert view["status"] == "succeeded", view
        usage = gw.usage()
        assert any(d["model"] == "voice" and d["audio_s"] > 0 for d in usage["days"])
    finally:
        gw.stop()


def _serve(tmp_path: Path, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    doc = {**doc, "server": {"state_dir": str(tmp_path / "state"), "port": free_port()}}
    (tmp_path / "config.toml").write_text(to_toml(doc))
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    env.pop("APPLIANCE_STATE_DIR", None)
    return subprocess.run([sys.executable, "-m", "appliance", "serve", "--config", str(tmp_path / "config.toml")],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_a_store_that_does_not_answer_stops_the_start_with_one_line(tmp_path: Path) -> None:
    done = _serve(tmp_path, {"store": {"url": "postgresql://postgres:pw@127.0.0.1:1/appliance"}})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not answer" in errors[0] and "pw" not in done.stderr, done.stderr


def test_brokers_that_do_not_answer_stop_the_start_with_one_line(tmp_path: Path) -> None:
    done = _serve(tmp_path, {"jobs": {"backend": "kafka", "brokers": [f"127.0.0.1:{free_port()}"]}})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "jobs.brokers: no broker answers" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
