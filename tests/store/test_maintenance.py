"""Maintenance passes: rollup before retention, retention by the configured ages, scheduled backup."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from appliance.config import StoreConfig
from appliance.store import BoxRecord, NewJob
from appliance.store.maintenance import Maintenance
from appliance.store.sqlcore import SqlStore
from appliance.usage import UsageRecord

DAY = 86_400.0


def test_retention_keeps_rolled_up_totals_and_deletes_by_age(store: SqlStore, tmp_path: Path) -> None:
    now = time.time()
    store.usage_insert([UsageRecord("/v1/embeddings", "mini", None, 200, tokens_in=5, at=now - 100 * DAY),
                        UsageRecord("/v1/embeddings", "mini", None, 200, tokens_in=7, at=now)])
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    old_file = jobs_dir / "old.mp3"
    old_file.write_bytes(b"x")
    os.utime(old_file, (now - 200 * 3600, now - 200 * 3600))
    (jobs_dir / "new.mp3").write_bytes(b"y")
    os.utime(jobs_dir / "new.mp3", (now + 190 * 3600, now + 190 * 3600))  # young at the time of the pass
    for name, at in (("job_old", now - 200 * 3600), ("job_new", now + 190 * 3600)):  # a job's upload folder
        (jobs_dir / name).mkdir()
        (jobs_dir / name / "upload").write_bytes(b"audio")
        os.utime(jobs_dir / name, (at, at))
    store.job_create(NewJob("j-old", "/v1/audio/speech", "tts", "-", None, "h", "{}", "http://x"))
    job = store.job_claim("box", models=["tts"])
    assert job is not None and store.job_finish(job, "{}")
    swept: list[int] = []
    m = Maintenance(store, StoreConfig(usage_retention_days=90, job_retention_h=168), jobs_dir=jobs_dir,
                    image_sweep=lambda: swept.append(1) or 3)
    removed = m.retention(now)
    assert removed["usage"] == 0  # the old day is not rolled up yet: its records stay
    m.daily(now + 200 * 3600)  # rollup, then retention, at a time when the job is old enough
    assert store.job_get("j-old") is None
    assert not old_file.exists() and (jobs_dir / "new.mp3").exists()
    assert not (jobs_dir / "job_old").exists() and (jobs_dir / "job_new" / "upload").exists()  # a crash's leftover
    assert len(store.usage_recent(since=None, until=None, key_id=None, model=None, limit=10)) == 1
    total = sum(d["tokens_in"] for d in store.usage_days(since=None, until=None, key_id=None, model=None))
    assert total == 12  # the pruned day lives on in its rollup
    assert swept


def test_scheduled_backup_is_consistent_and_keeps_the_newest(tmp_path: Path) -> None:
    from appliance.store import open_store

    store = open_store("", tmp_path / "state")
    try:
        store.usage_insert([UsageRecord("/v1/embeddings", "mini", None, 200)])
        m = Maintenance(store, StoreConfig(backup_dir=str(tmp_path / "bk"), backup_keep=2), jobs_dir=tmp_path)
        made = [m.backup(1_700_000_000.0 + i) for i in range(3)]
        assert all(p is not None for p in made)
        left = sorted(p.name for p in (tmp_path / "bk").iterdir())
        assert left == sorted(p.name for p in made[1:] if p is not None)
        conn = sqlite3.connect(tmp_path / "bk" / left[-1])
        assert conn.execute("select count(*) from usage").fetchone() == (1,)
        conn.close()
    finally:
        store.close()


async def test_schedule_registers_the_passes(tmp_path: Path) -> None:
    from appliance.store import open_store

    store = open_store("", tmp_path)
    m = Maintenance(store, StoreConfig(backup_dir=str(tmp_path / "bk")), jobs_dir=tmp_path)
    m.start()
    try:
        assert sorted(m.jobs()) == ["backup", "retention", "rollup"]
    finally:
        m.stop()
        store.close()


def test_retention_forgets_boxes_dead_for_forget_after_h_only(store: SqlStore, tmp_path: Path) -> None:
    from appliance.config import parse_config

    for box_id in ("live", "gone"):
        store.put_box(BoxRecord(box_id, "http://127.0.0.1:1", "1", 1, "ready", {}))
    store._write(lambda tx: tx.execute("UPDATE boxes SET heartbeat_at = heartbeat_at - ? WHERE box_id = ?",
                                       (25 * 3600.0, "gone")))
    cfg = parse_config({"fleet": {"forget_after_h": 24}})
    m = Maintenance(store, StoreConfig(), jobs_dir=tmp_path, forget_boxes_after_s=cfg.fleet.forget_after_h * 3600)
    assert m.retention(time.time())["boxes"] == 1
    assert [b.box_id for b in store.boxes()] == ["live"]
    assert Maintenance(store, StoreConfig(), jobs_dir=tmp_path).retention(time.time())["boxes"] == 0
