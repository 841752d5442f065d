"""Migrations on both backends: an older store upgrades on start, a newer one is refused untouched,
and a store that cannot be reached is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.store import StoreError, connect, open_store
from appliance.store.migrations import MIGRATIONS, Migration
from appliance.usage import UsageRecord


def test_previous_schema_upgrades_on_start_and_keeps_its_data(store_url: str, tmp_path: Path) -> None:
    old = connect(store_url)
    assert old.migrate(MIGRATIONS[:-1]) == [m.name for m in MIGRATIONS[:-1]]
    old.usage_insert([UsageRecord("/v1/chat/completions", "qwen", None, 200, tokens_in=7, at=1_700_000_000.0)])
    old.close()
    upgraded = open_store(store_url, tmp_path)
    try:
        assert upgraded.migrations() == sorted(m.name for m in MIGRATIONS)
        assert upgraded.usage_rollup("9999-12-31") == 1  # the new table works, the old rows are there
        assert upgraded.usage_days(since=None, until=None, key_id=None, model=None)[0]["tokens_in"] == 7
    finally:
        upgraded.close()


def test_unknown_newer_schema_is_refused_and_nothing_written(store_url: str, tmp_path: Path) -> None:
    newer = connect(store_url)
    newer.migrate((*MIGRATIONS, Migration("9999_from_the_future", ("CREATE TABLE future (x INTEGER)",))))
    newer.close()
    probe = connect(store_url)
    before = list(probe.dump())
    probe.close()
    with pytest.raises(StoreError, match="9999_from_the_future are newer than this appliance knows") as err:
        open_store(store_url, tmp_path)
    assert "\n" not in str(err.value)
    after = connect(store_url)
    try:
        assert list(after.dump()) == before
        assert "9999_from_the_future" in after.migrations()
    finally:
        after.close()


def test_store_url_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        connect("postgresql://postgres:secret@127.0.0.1:1/nothing")
    line = str(err.value)
    assert "does not answer" in line and "secret" not in line and "\n" not in line


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite:///"])
def test_unknown_store_url_is_one_line(url: str) -> None:
    with pytest.raises(StoreError, match="store url"):
        connect(url)
