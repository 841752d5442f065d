"""The box's heartbeat into the registry: its row follows readiness and residency, goes at a clean stop,
and a registry that fails or hangs is logged once per outage without stopping anything."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standins.launch import async_wait_until

from appliance.fleet import API_VERSION
from appliance.fleet.heartbeat import Heartbeat
from appliance.store import BoxRecord, StoreError, open_store
from appliance.store.sqlcore import SqlStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store("", tmp_path)
    yield s
    s.close()


class FlakyStore:
    """A store whose registry writes fail (`down`) or hang (`hang`) on demand."""

    def __init__(self, inner: SqlStore) -> None:
        self.inner = inner
        self.down = False
        self.hang = threading.Event()
        self.release = threading.Event()
        self.attempts = 0

    def describe(self) -> str:
        return "postgresql://registry"

    def put_box(self, box: BoxRecord) -> None:
        self.attempts += 1
        if self.hang.is_set():
            self.release.wait(30)
        if self.down:
            raise StoreError("store postgresql://registry: OperationalError: connection refused")
        self.inner.put_box(box)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _heartbeat(store: Any, **kw: Any) -> Heartbeat:
    args: dict[str, Any] = {"box_id": "box-1", "url": "http://10.0.0.5:8080", "version": "9.9", "interval_s": 0.05,
                            "expire_s": 5.0, "summary": lambda: {"generation": 3, "models": {}},
                            "readiness": lambda: "ready"}
    return Heartbeat(store, **{**args, **kw})


async def test_the_row_follows_readiness_and_residency_and_goes_at_a_clean_stop(store: SqlStore) -> None:
    state = {"readiness": "starting", "generation": 1}
    beat = _heartbeat(store, readiness=lambda: state["readiness"],
                      summary=lambda: {"generation": state["generation"], "models": {"qwen": {"tier": "vram"}}})
    beat.start()
    await async_wait_until(lambda: store.boxes(live_within_s=5) or None, 10, message="the first heartbeat")
    row = store.boxes()[0]
    assert (row.box_id, row.url, row.version, row.api_version, row.state) == (
        "box-1", "http://10.0.0.5:8080", "9.9", API_VERSION, "starting")
    state.update(readiness="ready", generation=2)
    await async_wait_until(lambda: store.boxes()[0].residency["generation"] == 2 or None, 10,
                           message="a later heartbeat")
    assert store.boxes()[0].state == "ready" and store.boxes()[0].joined_at == row.joined_at
    await beat.close()
    assert store.boxes() == []


async def test_a_stop_that_is_not_clean_leaves_the_row_to_expire(store: SqlStore) -> None:
    beat = _heartbeat(store)
    assert await beat.beat()
    await beat.close(remove=False)
    assert [b.box_id for b in store.boxes()] == ["box-1"]


async def test_a_failing_registry_is_logged_once_per_outage_and_the_beat_goes_on(
        store: SqlStore, caplog: pytest.LogCaptureFixture) -> None:
    flaky = FlakyStore(store)
    beat = _heartbeat(flaky)
    caplog.set_level(logging.WARNING, logger="appliance.fleet")
    flaky.down = True
    beat.start()
    try:
        await async_wait_until(lambda: len(caplog.records) >= 1 or None, 10, message="the outage logged")
        tried = flaky.attempts
        await async_wait_until(lambda: flaky.attempts >= tried + 3 or None, 10, message="three more failed beats")
        outage = [r.getMessage() for r in caplog.records]
        assert len(outage) == 1 and "connection refused" in outage[0] and "keeps serving" in outage[0]
        flaky.down = False
        await async_wait_until(lambda: len(caplog.records) >= 2 or None, 10, message="a beat after the outage")
        assert store.boxes()  # the row is written again, and logged once (below)
        assert len(caplog.records) == 2 and "written again" in caplog.records[1].getMessage()
        flaky.down = True  # a second outage is logged again, once
        await async_wait_until(lambda: len(caplog.records) >= 3 or None, 10, message="the second outage")
        tried = flaky.attempts
        await async_wait_until(lambda: flaky.attempts >= tried + 3 or None, 10, message="three more failed beats")
        assert len(caplog.records) == 3
        assert beat._task is not None and not beat._task.done()  # never stopped by a failure
    finally:
        flaky.down = False
        await beat.close()


async def test_a_hung_registry_write_is_bounded_and_does_not_pile_up(store: SqlStore) -> None:
    flaky = FlakyStore(store)
    beat = _heartbeat(flaky, interval_s=0.2)
    flaky.hang.set()
    try:
        assert not await beat.beat()  # gave up after its deadline
        assert not await beat.beat()  # the first write still hangs: no second thread behind it
    finally:
        flaky.hang.clear()
        flaky.release.set()
    await async_wait_until(lambda: (beat._write is not None and beat._write.done()) or None, 10,
                           message="the hung write to end")
    assert await beat.beat()
    await beat.close()
    assert store.boxes() == []


async def test_a_failing_residency_summary_is_a_failed_beat_not_a_crash(store: SqlStore) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("residency manager not started")

    beat = _heartbeat(store, summary=broken)
    assert not await beat.beat()
    assert store.boxes() == []
