"""Fixtures for the jobs suites: both queue backends over one store (the broker: tests/backing_services.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from appliance.jobs.kafka import KafkaQueue
from appliance.jobs.queue import JobQueue, LocalQueue
from appliance.store import Store, open_store
from appliance.store.sqlcore import SqlStore


@pytest.fixture
def jobs_store(tmp_path: Path) -> Iterator[SqlStore]:
    store = open_store("", tmp_path)
    yield store
    store.close()


class QueueFactory:
    """Makes queues of one backend over one store; every box of a test shares the topic prefix."""

    def __init__(self, backend: str, store: Store, broker: str | None) -> None:
        self.backend = backend
        self.store = store
        self.broker = broker
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.made: list[JobQueue] = []

    def __call__(self, owner: str) -> JobQueue:
        queue: JobQueue
        if self.backend == "kafka":
            assert self.broker is not None
            queue = KafkaQueue(self.store, owner, [self.broker], self.prefix, f"g-{self.prefix}")
        else:
            queue = LocalQueue(self.store, owner, poll_s=0.05)
        self.made.append(queue)
        return queue


@pytest.fixture(params=["local", "kafka"])
async def queues(request: pytest.FixtureRequest, jobs_store: SqlStore) -> AsyncIterator[QueueFactory]:
    broker = request.getfixturevalue("kafka_broker") if request.param == "kafka" else None
    factory = QueueFactory(request.param, jobs_store, broker)
    yield factory
    for queue in factory.made:
        await queue.close()
