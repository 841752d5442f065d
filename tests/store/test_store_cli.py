"""`appliance store copy --to postgresql://...` and `appliance store backup PATH` on real stores."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from backing_services import pg_schema_url
from typer.testing import CliRunner

from appliance.cli import app
from appliance.gateway.keys import KeyStore
from appliance.store import NewJob, connect, open_store
from appliance.usage import UsageRecord


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    return path


def _fill(tmp_path: Path) -> str:
    store = open_store("", tmp_path / "state")
    _, secret = KeyStore(store).create("ops", admin=True)
    store.usage_insert([UsageRecord("/v1/embeddings", "mini", None, 200, tokens_in=i) for i in range(50)])
    store.job_create(NewJob("j1", "/v1/audio/speech", "tts", "-", "idem", "h", "{}", "http://x"))
    store.state_put("footprints", {"qwen": 1})
    store.close()
    return secret


def test_copy_moves_every_table_into_postgresql(tmp_path: Path, config: Path, pg_database: str) -> None:
    secret = _fill(tmp_path)
    target = pg_schema_url(pg_database)
    result = CliRunner().invoke(app, ["store", "copy", "--to", target, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "usage: 50 rows" in result.output
    pg = connect(target)
    try:
        assert KeyStore(pg).verify(secret) is not None  # the same key works against the new store
        assert len(pg.usage_recent(since=None, until=None, key_id=None, model=None, limit=100)) == 50
        assert pg.state_get("footprints") == {"qwen": 1}
        pg.usage_insert([UsageRecord("/v1/embeddings", "mini", None, 200)])  # ids continue after the copy
        pg.job_create(NewJob("j2", "/v1/audio/speech", "tts", "-", None, "h", "{}", "http://x"))
    finally:
        pg.close()
    again = CliRunner().invoke(app, ["store", "copy", "--to", target, "--config", str(config)])
    assert again.exit_code == 1 and "not empty" in again.output


def test_copy_to_a_store_that_does_not_answer_is_one_line(tmp_path: Path, config: Path) -> None:
    result = CliRunner().invoke(app, ["store", "copy", "--to", "postgresql://postgres@127.0.0.1:1/x",
                                      "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "does not answer" in result.output


def test_backup_is_consistent_while_the_store_is_written(tmp_path: Path, config: Path) -> None:
    _fill(tmp_path)
    writer = open_store("", tmp_path / "state")  # stands for the running daemon
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            writer.usage_insert([UsageRecord("/v1/embeddings", "mini", None, 200)] * 20)

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        result = CliRunner().invoke(app, ["store", "backup", str(tmp_path / "b.db"), "--config", str(config)])
    finally:
        stop.set()
        thread.join(30)
        writer.close()
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(tmp_path / "b.db")
    try:
        assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
        count = conn.execute("select count(*) from usage").fetchone()[0]
        assert count >= 50 and (count - 50) % 20 == 0  # whole transactions only
    finally:
        conn.close()
