"""Two fleet boxes on a shared PostgreSQL and the Tansu Kafka broker; the box running a job goes away:
after kill -9 the other box sees its heartbeat stop, re-queues the job and runs it; after a clean stop
(SIGTERM) the stopping box puts the job back and announces it itself. Either way the client reads
exactly one result (the same job id, its second attempt)."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from backing_services import pg_schema_url
from daemon_harness import comfyui_engine, free_port

from appliance.fleet.token import write_token
from appliance.store import JobState, open_store

from .conftest import Gateway, launch, wait_until


def _box(tmp: Path, url: str, broker: str, prefix: str) -> dict[str, Any]:
    write_token(tmp / "state" / "fleet.token", "router-token")
    return {
        "engines": {"comfyui": comfyui_engine(free_port(), env={"COMFYUI_STANDIN_IMAGE_S": "8.0"})},
        "models": {"sd-turbo": {"engine": "comfyui", "modality": "image", "vram_gb": 10.0, "workflow": "sd35_turbo",
                                "checkpoint": "sd3.5_large_turbo.safetensors"}},
        "store": {"url": url},
        "jobs": {"backend": "kafka", "brokers": [broker], "topic_prefix": prefix},
        "fleet": {"enabled": True, "heartbeat_s": 0.3, "expire_s": 2.0},
    }


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_a_job_on_a_box_that_goes_away_is_completed_once_by_a_live_box(tmp_path: Path, pg_database: str,
                                                                       kafka_broker: str, how: str) -> None:
    url = pg_schema_url(pg_database)
    prefix = f"dead{uuid.uuid4().hex[:6]}."
    store = open_store(url, None)
    boxes: list[Gateway] = []
    try:
        a = launch(tmp_path / "a", _box(tmp_path / "a", url, kafka_broker, prefix), keys={"admin": True})
        boxes.append(a)
        a_id = (tmp_path / "a" / "state" / "box_id").read_text().strip()
        body = {"route": "/v1/images/generations", "model": "sd-turbo", "prompt": "p", "size": "64x64",
                "response_format": "b64_json"}
        made = a.request("POST", "/v1/jobs", body, key="admin")
        assert made.status == 202, made.body
        job_id = made.json()["id"]
        wait_until(lambda: (j := store.job_get(job_id)) is not None and j.state is JobState.RUNNING, 60,
                   "the job running on box a")
        b = launch(tmp_path / "b", _box(tmp_path / "b", url, kafka_broker, prefix))  # joins while a runs it
        boxes.append(b)
        b.keys = a.keys
        b_id = (tmp_path / "b" / "state" / "box_id").read_text().strip()
        job = store.job_get(job_id)
        assert job is not None and job.state is JobState.RUNNING and job.owner == a_id
        if how == "kill -9":  # the box dies with the job; its row stays, to expire
            os.kill(a.proc.pid, signal.SIGKILL)
            a.proc.wait(10)
        a.stop()  # SIGTERM (after kill -9: reaps the engines the dead daemon left)
        if how == "SIGTERM":
            assert "re-queued, the daemon stopped while it ran" in a.log()
            assert [r.box_id for r in store.boxes()] == [b_id]  # a clean stop removes the row at once
        wait_until(lambda: b.request("GET", f"/v1/jobs/{job_id}", key="admin").json()["status"] == "succeeded",
                   120, "the job completed by box b")
        view = b.request("GET", f"/v1/jobs/{job_id}", key="admin").json()
        assert view["attempts"] == 2 and len(view["result"]["data"]) == 1
        job = store.job_get(job_id)
        assert job is not None and job.owner == b_id and job.state is JobState.SUCCEEDED
        assert len(next(rows for table, _, rows in store.dump() if table == "jobs")) == 1  # one job, one result
        if how == "kill -9":
            assert f"re-queued, box {a_id} stopped heartbeating" in b.log()
        assert [r.box_id for r in store.boxes(live_within_s=2.0)] == [b_id]
    finally:
        for box in boxes:
            box.stop()
        store.close()
