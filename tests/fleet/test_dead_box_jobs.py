"""A box that dies while it runs a job: the live boxes notice its heartbeat stopped, exactly one of them
re-queues the job and announces it on Kafka, and exactly one runs it to the end (real PostgreSQL, the
Tansu Kafka broker)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from backing_services import pg_schema_url
from standins.launch import async_wait_until

from appliance.fleet.heartbeat import Heartbeat
from appliance.jobs.kafka import KafkaQueue
from appliance.store import Job, JobState, NewJob, open_store
from appliance.store.sqlcore import SqlStore

EXPIRE_S = 1.5


class Box:
    """What a fleet box holds for its jobs: its own store connection, Kafka queue and heartbeat."""

    def __init__(self, name: str, url: str, broker: str, prefix: str) -> None:
        self.name = name
        self.store: SqlStore = open_store(url, None)
        self.queue = KafkaQueue(self.store, name, [broker], prefix, f"g-{prefix}")
        self.announced: list[str] = []
        self.heartbeat = Heartbeat(self.store, box_id=name, url=f"http://{name}:1", version="t", interval_s=0.2,
                                   expire_s=EXPIRE_S, summary=lambda: {"models": {}}, readiness=lambda: "ready",
                                   announce=self._announce, max_attempts=3)
        self.finished: list[str] = []
        self._worker: asyncio.Task[None] | None = None
        self.sweeps = 0
        sweep = self.heartbeat.sweep

        async def counted() -> list[Job]:
            done = await sweep()
            self.sweeps += 1
            return done

        self.heartbeat.sweep = counted  # type: ignore[method-assign]

    async def _announce(self, job: Job) -> None:
        self.announced.append(job.id)
        await self.queue.announce(job)

    async def start(self, work: bool = True) -> None:
        await self.queue.start(["tts"])
        self.heartbeat.start()
        if work:
            self._worker = asyncio.ensure_future(self._work())

    async def _work(self) -> None:
        while True:
            job = await self.queue.take("tts")
            if self.store.job_finish(job, json.dumps({"status": 200, "by": self.name})):
                self.finished.append(job.id)

    async def die(self) -> None:
        """kill -9 as the fleet sees it: no more heartbeats, the row stays, the consumer is gone."""
        if self._worker is not None:
            self._worker.cancel()
        await self.heartbeat.close(remove=False)
        await self.queue.close()

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await self.heartbeat.close()
        await self.queue.close()
        self.store.close()


@pytest.fixture
async def fleet(pg_database: str, kafka_broker: str) -> AsyncIterator[Any]:
    url = pg_schema_url(pg_database)
    prefix = f"f{uuid.uuid4().hex[:8]}."
    made: list[Box] = []

    def box(name: str) -> Box:
        made.append(Box(name, url, kafka_broker, prefix))
        return made[-1]

    yield box
    for b in made:
        await b.stop()


async def test_a_job_held_by_a_box_that_dies_is_completed_exactly_once_by_another(fleet: Any) -> None:
    a: Box = fleet("box-a")
    await a.start(work=False)
    a.store.job_create(NewJob("j1", "/v1/audio/speech", "tts", "-", None, "h", "{}", "http://x"))
    first = a.store.job_get("j1")
    assert first is not None
    await a.queue.announce(first)
    held = await asyncio.wait_for(a.queue.take("tts"), 30)  # claimed by box-a: running under its name
    assert held.owner == "box-a" and held.state is JobState.RUNNING
    await a.die()

    b: Box = fleet("box-b")
    c: Box = fleet("box-c")
    await asyncio.gather(b.start(), c.start())  # both sweep for dead boxes' jobs, both take tts jobs
    await async_wait_until(lambda: (b.finished or c.finished) or None, 60, message="the job completed elsewhere")
    swept = b.sweeps, c.sweeps
    await async_wait_until(lambda: (b.sweeps >= swept[0] + 3 and c.sweeps >= swept[1] + 3) or None, 30,
                           message="three more sweeps by both boxes")  # nothing is taken back twice

    done = b.store.job_get("j1")
    assert done is not None and done.state is JobState.SUCCEEDED and done.attempts == 2
    assert done.owner in ("box-b", "box-c") and done.result is not None and done.owner in done.result
    assert sorted(b.finished + c.finished) == ["j1"]  # run once
    assert sorted(b.announced + c.announced) == ["j1"]  # re-queued once, by one box
    assert not b.store.job_finish(held, '{"status": 200}')  # the dead box's attempt, were it to report late
    assert [r.box_id for r in b.store.boxes(live_within_s=EXPIRE_S)] == ["box-b", "box-c"]
