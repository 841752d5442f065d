"""kill -9 of the daemon while jobs are queued and running: after the restart every job completes,
each idempotency key has exactly one job and one result, and no usage record older than the
documented bound (`store.usage_flush_s`) is lost. On the embedded backends (SQLite, local queue) and
on the full profile's (PostgreSQL, Kafka on a Tansu broker)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from backing_services import pg_schema_url
from daemon_harness import comfyui_engine, free_port

from appliance.store import JobState, open_store

from .conftest import Gateway, full_config, launch, wait_until

FLUSH_S = 0.2


def _store_view(gw: Gateway, url: str) -> tuple[list[dict[str, Any]], int]:
    """(job rows, usage rows) read straight from the daemon's store."""
    store = open_store(url, gw.state)
    try:
        tables = {t: [dict(zip(cols, row, strict=True)) for row in rows] for t, cols, rows in store.dump()}
    finally:
        store.close()
    return tables["jobs"], len(tables["usage"])


@pytest.mark.parametrize("profile", ["ultra-minimal", "full"])
def test_jobs_and_usage_survive_kill_9_of_the_daemon(tmp_path: Path, profile: str,
                                                     request: pytest.FixtureRequest) -> None:
    doc = full_config()
    doc["engines"]["comfyui"] = comfyui_engine(free_port(), env={"COMFYUI_STANDIN_IMAGE_S": "1.0"})
    doc["store"] = {"usage_flush_s": FLUSH_S}
    doc["jobs"] = {"box_id": "box-1"}  # the port changes across the restart below; the box does not
    url = ""
    if profile == "full":
        url = pg_schema_url(request.getfixturevalue("pg_database"))
        doc["profile"] = "full"
        doc["store"]["url"] = url
        doc["jobs"].update({"backend": "kafka", "brokers": [request.getfixturevalue("kafka_broker")],
                            "topic_prefix": f"dur{free_port()}."})
    gw = launch(tmp_path, doc, keys={"user": False, "admin": True})
    keys = gw.keys
    body = {"route": "/v1/images/generations", "model": "sd-turbo", "prompt": "p", "size": "64x64",
            "response_format": "b64_json"}
    try:
        for i in range(3):  # synchronous requests: their usage records must survive
            assert gw.request("POST", "/v1/embeddings", {"model": "minilm", "input": f"t{i}"}).status == 200
        ids = {}
        for i in range(4):
            resp = gw.request("POST", "/v1/jobs", {**body, "prompt": f"p{i}"}, headers={"Idempotency-Key": f"k{i}"})
            assert resp.status == 202, resp.body
            ids[f"k{i}"] = resp.json()["id"]
        # Kill while one job runs and the others wait, once the usage records are past the flush bound.
        wait_until(lambda: any(j["state"] == "running" for j in _store_view(gw, url)[0]), 60, "a job to run")
        wait_until(lambda: _store_view(gw, url)[1] >= 3, 60, "the usage batch to be written")
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
    finally:
        gw.stop()  # reaps the engines the killed daemon left
    jobs, usage_rows = _store_view(gw, url)
    assert usage_rows >= 3
    assert {j["state"] for j in jobs} <= {"queued", "running", "succeeded"}

    again = launch(tmp_path, doc)
    again.keys = keys
    try:
        for key, job_id in ids.items():  # the clients retry with their idempotency keys
            resp = again.request("POST", "/v1/jobs", {**body, "prompt": f"p{key[1:]}"},
                                 headers={"Idempotency-Key": key})
            assert resp.status == 200 and resp.json()["id"] == job_id
        wait_until(lambda: all(again.request("GET", f"/v1/jobs/{i}").json()["status"] == "succeeded"
                               for i in ids.values()), 120, "every job to complete after the restart")
        for job_id in ids.values():
            view = again.request("GET", f"/v1/jobs/{job_id}").json()
            assert len(view["result"]["data"]) == 1 and view["result"]["data"][0]["b64_json"]
        jobs, usage_rows = _store_view(again, url)
        by_key = [j["idempotency_key"] for j in jobs]
        assert sorted(by_key) == sorted(ids)  # exactly one job per idempotency key
        assert all(JobState(j["state"]) is JobState.SUCCEEDED and j["result"] for j in jobs)
        assert usage_rows >= 3
    finally:
        again.stop()
