"""What moved behind the store: keys.db and the JSON state files taken over on the first start, the
durable usage sink (never blocks, batches, flushes what it holds), and the configuration that picks
the backends."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from standins.launch import async_wait_until

from appliance.config import ConfigError, parse_config
from appliance.gateway.keys import KeyStore
from appliance.store import open_store
from appliance.store.sqlcore import SqlStore
from appliance.store.state_doc import StoreStateDoc
from appliance.store.usage_sink import StoreUsageSink
from appliance.usage import UsageRecord


def _old_keys_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("create table keys (id text primary key, name text not null, admin integer, hash text not null, "
                 "created float, revoked float)")
    conn.execute("insert into keys values ('a1b2c3d4', 'ops', 1, 'f' || 'e', 1700000000.0, null)")
    conn.execute("insert into keys values ('0badc0de', 'gone', 0, 'ab', 1700000001.0, 1700000002.0)")
    conn.commit()
    conn.close()


def test_keys_db_is_migrated_on_first_start_and_only_once(tmp_path: Path) -> None:
    _old_keys_db(tmp_path / "data" / "keys.db")
    (tmp_path / "data" / "footprints.json").write_text(json.dumps({"qwen": 21 << 30}))
    store = open_store("", tmp_path)
    try:
        keys = {k.id: k for k in KeyStore(store).list()}
        assert set(keys) == {"a1b2c3d4", "0badc0de"} and keys["a1b2c3d4"].admin and keys["0badc0de"].revoked
        assert StoreStateDoc(store, "footprints").load() == {"qwen": 21 << 30}
    finally:
        store.close()
    assert not (tmp_path / "data" / "keys.db").exists() and (tmp_path / "data" / "keys.db.migrated").exists()
    again = open_store("", tmp_path)  # a second start imports nothing twice
    try:
        assert len(KeyStore(again).list()) == 2
    finally:
        again.close()


def test_key_store_round_trip_over_the_store(store: SqlStore) -> None:
    keys = KeyStore(store)
    key, secret = keys.create("alice", admin=True)
    assert keys.verify(secret) == key and keys.has_active()
    assert keys.verify(secret + "x") is None
    assert keys.revoke(key.id) == 1 and keys.verify(secret) is None and not keys.has_active()


async def test_usage_sink_never_writes_on_record_and_flushes_batches(store: SqlStore) -> None:
    sink = StoreUsageSink(store, flush_s=30.0, batch_max=3)
    sink.start()
    try:
        sink.record(UsageRecord("/v1/embeddings", "mini", None, 200, tokens_in=4))
        sink.record(UsageRecord("/v1/embeddings", "mini", None, 200, tokens_in=4))
        # record() returned without touching the store: nothing there yet (flush_s is 30 s away)
        assert store.usage_recent(since=None, until=None, key_id=None, model=None, limit=10) == []
        sink.record(UsageRecord("/v1/embeddings", "mini", None, 200, tokens_in=4))  # a full batch wakes the writer

        async def written() -> int:
            return len(await asyncio.to_thread(store.usage_recent, since=None, until=None, key_id=None,
                                               model=None, limit=10))
        async def three_written() -> bool | None:
            return await written() == 3 or None

        await async_wait_until(three_written, 5, message="the batch written")
        assert await written() == 3
        sink.record(UsageRecord("/v1/embeddings", "mini", "k", 500, error="engine_error"))
        assert await sink.flush() == 1
        assert sink.totals()[0]["requests"] == 3 and sink.recent(10)[-1].error == "engine_error"
    finally:
        await sink.close()


async def test_usage_sink_keeps_a_batch_the_store_refused(tmp_path: Path) -> None:
    store = open_store("", tmp_path)
    sink = StoreUsageSink(store, flush_s=30.0)
    sink.start()
    sink.record(UsageRecord("/v1/embeddings", "mini", None, 200))
    store.close()  # the store goes away under the sink
    assert await sink.flush() == 0
    assert len(sink._pending) == 1  # kept for the next try, not lost
    await sink.close()


def test_profile_full_requires_the_external_backends() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"profile": "full"}, "c.toml")
    assert any("store.url" in line and "postgresql" in line for line in err.value.lines)
    assert any("jobs.backend" in line for line in err.value.lines)
    full = parse_config({"profile": "full", "store": {"url": "postgresql://db/appliance"},
                         "jobs": {"backend": "kafka", "brokers": ["kafka:9092"]}}, "c.toml")
    assert full.jobs.backend == "kafka"
    with pytest.raises(ConfigError, match=r"c.toml: jobs.brokers: required"):
        parse_config({"jobs": {"backend": "kafka"}}, "c.toml")
    with pytest.raises(ConfigError, match=r"c.toml: store.url: must be sqlite"):
        parse_config({"store": {"url": "mysql://x"}}, "c.toml")
    with pytest.raises(ConfigError, match=r"store.rollup_at: must be HH:MM"):
        parse_config({"store": {"rollup_at": "25:00"}}, "c.toml")
