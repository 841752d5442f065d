"""A real daemon with fleet.enabled: it registers under its one id (the jobs' owner id, kept in
<state_dir>/box_id), heartbeats its readiness and residency, and its row goes at a clean stop but
stays (to expire) after kill -9."""

from __future__ import annotations

from pathlib import Path

from backing_services import pg_schema_url
from daemon_harness import Daemon, wait_for

from appliance.fleet import API_VERSION
from appliance.fleet.identity import legacy_box_id
from appliance.fleet.token import write_token
from appliance.store import JobState, NewJob, open_store


def test_a_fleet_daemon_registers_heartbeats_and_leaves_cleanly(tmp_path: Path, pg_database: str) -> None:
    url = pg_schema_url(pg_database)
    doc = {"store": {"url": url}, "fleet": {"enabled": True, "heartbeat_s": 0.2, "expire_s": 3}}
    daemon = Daemon(tmp_path, doc)
    write_token(daemon.state / "fleet.token", "router-shared-token")
    store = open_store(url, None)
    # What an older appliance, named hostname:port, was running when it stopped.
    store.job_create(NewJob("old1", "/v1/audio/speech", "tts", "-", None, "h", "{}", "http://x"))
    assert store.job_claim(legacy_box_id(daemon.port), job_id="old1") is not None
    try:
        daemon.start()
        box_id = (daemon.state / "box_id").read_text().strip()
        assert box_id and box_id != legacy_box_id(daemon.port)
        assert store.job_get("old1").state is JobState.QUEUED  # type: ignore[union-attr]  # taken back once
        wait_for(lambda: [b.state for b in store.boxes(live_within_s=3)] == ["ready"], 20, "the box ready")
        row = store.boxes()[0]
        assert (row.box_id, row.url, row.api_version) == (box_id, daemon.url, API_VERSION)
        assert row.residency["box_id"] == box_id and "models" in row.residency
        assert daemon.get("/api/status")["jobs"]["box_id"] == box_id  # one identity: jobs' owner = fleet box
        first_beat = row.heartbeat_at
        wait_for(lambda: store.boxes()[0].heartbeat_at > first_beat, 10, "a later heartbeat")
        daemon.stop()
        assert daemon.proc is not None and daemon.proc.returncode == 0
        assert store.boxes() == []  # a clean stop removes the row

        daemon.start()  # the same state directory: the same id
        wait_for(lambda: [b.box_id for b in store.boxes(live_within_s=3)] == [box_id], 20, "registered again")
        daemon.kill()  # returns once the process is gone: nothing can remove its row any more
        assert [b.box_id for b in store.boxes()] == [box_id]  # left to expire
        wait_for(lambda: store.boxes(live_within_s=3) == [], 10, "the dead box's row to expire")
    finally:
        daemon.kill()
        store.close()
