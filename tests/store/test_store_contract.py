"""The Store protocol's contract, run against both backends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from daemon_harness import wait_for

from appliance.store import BoxRecord, JobState, KeyRow, NewJob
from appliance.store.sqlcore import SqlStore, day_of
from appliance.usage import UsageRecord


def _job(jid: str, model: str = "tts", idem: str | None = None, key: str = "-") -> NewJob:
    return NewJob(jid, "/v1/audio/speech", model, key, idem, "hash", '{"input": "hi"}', "http://127.0.0.1:1")


def test_keys_insert_revoke_and_fingerprint(store: SqlStore) -> None:
    before = store.keys_fingerprint()
    store.key_insert(KeyRow("a1", "alice", True, "h1", 100.0, None))
    store.key_insert(KeyRow("b2", "bob", False, "h2", 101.0, None))
    added = store.keys_fingerprint()
    assert added != before
    assert [(k.id, k.admin) for k in store.key_rows()] == [("a1", True), ("b2", False)]
    assert store.key_revoke("bob", 200.0) == 1
    assert store.key_revoke("bob", 201.0) == 0  # already revoked
    assert store.keys_fingerprint() != added
    assert store.key_rows()[1].revoked == 200.0


def test_usage_filters_days_rollup_and_prune(store: SqlStore) -> None:
    day1, day2 = 1_700_000_000.0, 1_700_000_000.0 + 86_400
    recs = [UsageRecord("/v1/chat/completions", "qwen", "k1", 200, tokens_in=10, tokens_out=5, gpu_s=2.0, at=day1),
            UsageRecord("/v1/audio/speech", "tts", "k2", 200, audio_s=3.5, gpu_s=1.0, at=day1 + 1),
            UsageRecord("/v1/chat/completions", "qwen", "k1", 502, error="engine_error", at=day2)]
    store.usage_insert(recs)
    recent = store.usage_recent(since=None, until=None, key_id="k1", model=None, limit=10)
    assert [r["status"] for r in recent] == [200, 502]  # oldest first
    assert store.usage_recent(since=day2, until=None, key_id=None, model=None, limit=10)[0]["error"] == "engine_error"
    days = store.usage_days(since=None, until=None, key_id=None, model="qwen")
    assert [(d["day"], d["requests"], d["errors"], d["tokens_in"]) for d in days] == [
        (day_of(day1), 1, 0, 10), (day_of(day2), 1, 1, 0)]
    assert store.usage_rollup(day_of(day2)) == 1  # only the complete day before day2
    assert store.usage_prune(day2) == 2
    assert len(store.usage_recent(since=None, until=None, key_id=None, model=None, limit=10)) == 1
    days = store.usage_days(since=None, until=None, key_id=None, model=None)  # day1 now from the rollup
    assert [(d["day"], d["model"], d["requests"], d["audio_s"]) for d in days] == [
        (day_of(day1), "qwen", 1, 0.0), (day_of(day1), "tts", 1, 3.5), (day_of(day2), "qwen", 1, 0.0)]
    assert store.usage_days(since=None, until=None, key_id="k2", model=None)[0]["gpu_s"] == 1.0
    assert store.usage_rollup(day_of(day2)) == 0  # rerun: nothing left to fold, nothing doubled
    assert sum(d["requests"] for d in store.usage_days(since=None, until=None, key_id=None, model=None)) == 3


def test_state_documents(store: SqlStore) -> None:
    assert store.state_get("footprints") is None
    store.state_put("footprints", {"qwen": 123})
    store.state_put("footprints", {"qwen": 456})
    assert store.state_get("footprints") == {"qwen": 456}
    store.state_put_nowait("transitions", {"qwen": {"load": [1.0]}})
    wait_for(lambda: store.state_get("transitions") is not None, 10, "the queued state write")
    assert store.state_get("transitions") == {"qwen": {"load": [1.0]}}


def test_jobs_idempotency_claim_position_and_settle(store: SqlStore) -> None:
    first, created = store.job_create(_job("j1", idem="abc"))
    again, created_again = store.job_create(_job("j9", idem="abc"))
    assert created and not created_again and again.id == "j1"
    other_key, created_other = store.job_create(_job("j8", idem="abc", key="k2"))  # idempotency is per key
    assert created_other and other_key.id == "j8"
    second, _ = store.job_create(_job("j2"))
    assert store.job_position(first) == 0 and store.job_position(second) == 2
    claimed = store.job_claim("box-a", models=["tts"])
    assert claimed is not None and claimed.id == "j1" and claimed.state is JobState.RUNNING and claimed.attempts == 1
    assert store.job_fail(claimed, "engine_error: 502", retry=True)
    retried = store.job_claim("box-a", job_id="j1")
    assert retried is not None and retried.attempts == 2 and retried.error == "engine_error: 502"
    assert not store.job_finish(claimed, '{"status": 200}')  # a stale attempt reports nothing
    assert store.job_finish(retried, '{"status": 200}')
    done = store.job_get("j1")
    assert done is not None and done.state is JobState.SUCCEEDED and done.result == '{"status": 200}'
    assert store.job_claim("box-a", models=["other"]) is None
    cancelled = store.job_cancel("j2")
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert store.job_cancel("missing") is None
    assert [j.id for j in store.jobs_queued(["tts"])] == ["j8"]


def test_concurrent_claims_never_share_a_job(store: SqlStore) -> None:
    for i in range(40):
        store.job_create(_job(f"c{i}"))
    got: list[str] = []
    lock = threading.Lock()

    def worker(box: str) -> None:
        while (job := store.job_claim(box, models=["tts"])) is not None:
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"box{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == sorted(f"c{i}" for i in range(40))


def test_requeue_only_own_running_jobs_and_prune_finished(store: SqlStore) -> None:
    for i in range(3):
        store.job_create(_job(f"r{i}"))
    mine = store.job_claim("box-a", models=["tts"])
    theirs = store.job_claim("box-b", models=["tts"])
    assert mine is not None and theirs is not None
    assert [j.id for j in store.jobs_requeue("box-a")] == [mine.id]
    assert store.job_get(theirs.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert store.job_get(mine.id).error.startswith("interrupted")  # type: ignore[union-attr]
    assert store.job_finish(theirs, "{}")
    assert store.jobs_prune(time.time() + 1) == 1
    assert store.job_get(theirs.id) is None


def test_dump_and_load_copy_every_table(store: SqlStore, tmp_path: object) -> None:
    store.key_insert(KeyRow("a1", "alice", True, "h1", 100.0, None))
    store.usage_insert([UsageRecord("/v1/embeddings", "mini", None, 200, at=1_700_000_000.0)])
    store.job_create(_job("d1"))
    tables = {t: (cols, rows) for t, cols, rows in store.dump()}
    assert len(tables["keys"][1]) == 1 and len(tables["usage"][1]) == 1 and len(tables["jobs"][1]) == 1


async def test_event_loop_entry_points_match_the_sync_ones(store: SqlStore) -> None:
    made, created = await store.ajob_create(_job("a1", idem="x"))
    again, created_again = await store.ajob_create(_job("a2", idem="x"))
    assert created and not created_again and again.id == made.id == "a1"
    claimed = await store.ajob_claim("box", job_id="a1")
    assert claimed is not None and claimed.state is JobState.RUNNING and claimed.owner == "box"
    assert await store.ajob_claim("box", job_id="a1") is None  # already running
    assert await store.ajob_claim("box", models=[]) is None


def _box(box_id: str, state: str = "ready", url: str = "http://127.0.0.1:1") -> BoxRecord:
    return BoxRecord(box_id, url, "1.2.3", 1, state, {"generation": 1, "models": {"qwen": {"tier": "gpu"}}})


def _age_heartbeat(store: SqlStore, box_id: str, by_s: float) -> None:
    """Move the box's last heartbeat `by_s` into the past (as if it had stopped beating then)."""
    store._write(lambda tx: tx.execute("UPDATE boxes SET heartbeat_at = heartbeat_at - ? WHERE box_id = ?",
                                       (by_s, box_id)))


def test_box_registry_upsert_keeps_joined_at_and_expires_by_heartbeat(store: SqlStore) -> None:
    assert store.boxes() == []
    store.put_box(_box("b1", state="starting"))
    first = store.boxes()[0]
    assert (first.box_id, first.state, first.api_version, first.residency["models"]) == (
        "b1", "starting", 1, {"qwen": {"tier": "gpu"}})
    assert abs(first.heartbeat_at - time.time()) < 60 and first.joined_at == first.heartbeat_at
    _age_heartbeat(store, "b1", 5.0)
    store.put_box(_box("b1", state="ready", url="http://10.0.0.1:9"))
    again = store.boxes()[0]
    assert (again.state, again.url) == ("ready", "http://10.0.0.1:9")
    assert again.joined_at == first.joined_at and again.heartbeat_at > first.heartbeat_at - 5.0
    store.put_box(_box("b2"))
    assert [b.box_id for b in store.boxes(live_within_s=30)] == ["b1", "b2"]
    _age_heartbeat(store, "b1", 100.0)
    assert [b.box_id for b in store.boxes(live_within_s=30)] == ["b2"]  # b1 stopped beating
    assert [b.box_id for b in store.boxes()] == ["b1", "b2"]  # still there until removed
    assert store.remove_box("b1") and not store.remove_box("b1")
    assert [b.box_id for b in store.boxes()] == ["b2"]
    assert "boxes" not in {t for t, _, _ in store.dump()}  # live state, not copied


def test_boxes_dead_long_ago_are_forgotten_but_not_live_recent_or_busy_ones(store: SqlStore) -> None:
    for box_id in ("live", "recent", "old", "old-busy"):
        store.put_box(_box(box_id))
    store.job_create(_job("still-running"))
    assert store.job_claim("old-busy", models=["tts"]) is not None  # its row finds its job for a requeue
    _age_heartbeat(store, "recent", 60.0)  # expired a minute ago
    _age_heartbeat(store, "old", 2 * 86400.0)
    _age_heartbeat(store, "old-busy", 2 * 86400.0)
    assert store.boxes_forget(older_than_s=86400.0) == ["old"]
    assert [b.box_id for b in store.boxes()] == ["live", "old-busy", "recent"]
    assert store.boxes_forget(older_than_s=86400.0) == []  # nothing more to do
    assert [j.id for j in store.jobs_requeue_orphans(expire_s=30, max_attempts=3)] == ["still-running"]
    assert store.boxes_forget(older_than_s=86400.0) == ["old-busy"]  # its job is back in the queue
    store.put_box(_box("old"))  # a forgotten box that comes back is a new row
    assert [b.box_id for b in store.boxes(live_within_s=30)] == ["live", "old"]


def test_dead_boxes_running_jobs_go_back_to_the_queue_once(store: SqlStore) -> None:
    for i in range(3):
        store.job_create(_job(f"o{i}"))
    store.put_box(_box("alive"))
    store.put_box(_box("dead"))
    on_dead = store.job_claim("dead", models=["tts"])
    on_alive = store.job_claim("alive", models=["tts"])
    elsewhere = store.job_claim("solo", models=["tts"])  # a box with no row: not a fleet box, not dead
    assert on_dead is not None and on_alive is not None and elsewhere is not None
    assert store.jobs_requeue_orphans(expire_s=30, max_attempts=3) == []  # every box beat just now
    _age_heartbeat(store, "dead", 100.0)
    back = store.jobs_requeue_orphans(expire_s=30, max_attempts=3)
    assert [j.id for j in back] == [on_dead.id] and back[0].state is JobState.QUEUED
    assert back[0].error is not None and "stopped heartbeating" in back[0].error
    assert store.jobs_requeue_orphans(expire_s=30, max_attempts=3) == []  # once
    assert store.job_get(on_alive.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert store.job_get(elsewhere.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert not store.job_finish(on_dead, "{}")  # the dead box's late report is refused
    rerun = store.job_claim("alive", job_id=on_dead.id)
    assert rerun is not None and rerun.attempts == on_dead.attempts + 1
    _age_heartbeat(store, "alive", 100.0)  # a job that outlived max_attempts boxes fails for good
    last = store.jobs_requeue_orphans(expire_s=30, max_attempts=2)
    assert sorted((j.id, j.state) for j in last) == sorted([(on_alive.id, JobState.QUEUED),
                                                            (rerun.id, JobState.FAILED)])
    assert store.job_get(rerun.id).finished is not None  # type: ignore[union-attr]


def test_concurrent_orphan_requeues_hand_each_job_back_once(store: SqlStore) -> None:
    for i in range(20):
        store.job_create(_job(f"q{i}"))
        assert store.job_claim("dead", models=["tts"]) is not None
    store.put_box(_box("dead"))
    _age_heartbeat(store, "dead", 100.0)
    got: list[str] = []
    lock = threading.Lock()

    def sweeper() -> None:
        for _ in range(5):
            found = store.jobs_requeue_orphans(expire_s=10, max_attempts=3)
            with lock:
                got.extend(j.id for j in found)

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == sorted(f"q{i}" for i in range(20))


def test_request_windows_count_per_key_and_window(store: SqlStore) -> None:
    assert [store.count_request("k1", 600) for _ in range(3)] == [1, 2, 3]
    assert store.count_request("k2", 600) == 1  # another key: its own count
    assert store.count_request("k1", 660) == 1  # the next window starts again
    assert store.count_request("k1", 660) == 2


def test_concurrent_request_counts_lose_nothing(store: SqlStore) -> None:
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _: store.count_request("busy", 1200), range(40)))
    assert sorted(counts) == list(range(1, 41))
