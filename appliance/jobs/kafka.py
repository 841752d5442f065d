"""The Kafka job queue (the full profile): a topic per model, one consumer group shared by the boxes,
so each box takes the jobs of the models it serves and a job's message goes to one box of the group.
A model's topic has `jobs.partitions` partitions (messages keyed by job id), so up to that many boxes
take its jobs at once; a topic keeps the count it was made with.

A message carries only the job id; the store's job row stays the truth. A box claims the job in the
store (atomically, so a redelivered message or a second box cannot run it twice) and then commits
the message's offset. A box that dies after the claim leaves the job running under its name, and
re-queues and re-announces it at its next start (`JobRunner.start`), or a live fleet box does once
the dead box's registry row expires (appliance.fleet.heartbeat); every job still queued for its
models is announced again at start too (a duplicate message is skipped by the claim). Topics are
created at start. `stop_taking()` (a drain) stops the consumer, which leaves the group: the
partitions go to the other boxes, and the messages read here but not claimed (their offsets not
committed) are delivered to them. The producer stays, for retries of the jobs still running here.
Imported only when `jobs.backend = "kafka"` (aiokafka stays out of the default daemon).
It must not run jobs or decide retries: the runner does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from ..store import Job, Store

log = logging.getLogger("appliance.jobs")
START_TIMEOUT_S = 15.0


def topic_for(prefix: str, model: str) -> str:
    """Kafka topic names allow [A-Za-z0-9._-]; anything else in a model id becomes '_'."""
    return prefix + re.sub(r"[^A-Za-z0-9._-]", "_", model)


class KafkaQueue:
    backend = "kafka"

    def __init__(self, store: Store, owner: str, brokers: list[str], topic_prefix: str, group: str,
                 partitions: int = 8) -> None:
        self.store = store
        self.owner = owner
        self.brokers = brokers
        self.prefix = topic_prefix
        self.group = group
        self.partitions = partitions
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._inbox: dict[str, asyncio.Queue[ConsumerRecord[bytes, bytes]]] = {}
        self._model_of: dict[str, str] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self, models: Iterable[str]) -> None:
        names = list(models)
        self._model_of = {topic_for(self.prefix, m): m for m in names}
        self._inbox = {m: asyncio.Queue() for m in names}
        servers = ",".join(self.brokers)
        await self._create_topics(servers, list(self._model_of))
        self._producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
        await asyncio.wait_for(self._producer.start(), START_TIMEOUT_S)
        # Jobs queued while no message reached Kafka for them (a broker away at submit time) are
        # announced again; a job announced twice is claimed once, the other message is skipped.
        for job in await asyncio.to_thread(self.store.jobs_queued, names):
            await self.announce(job)
        if self._model_of:
            self._consumer = AIOKafkaConsumer(*self._model_of, bootstrap_servers=servers, group_id=self.group,
                                              enable_auto_commit=False, auto_offset_reset="earliest",
                                              # a box that dies is noticed in seconds, not aiokafka's 10 s default
                                              session_timeout_ms=6000, heartbeat_interval_ms=500)
            await asyncio.wait_for(self._consumer.start(), START_TIMEOUT_S)
            self._reader = asyncio.ensure_future(self._read())

    async def _create_topics(self, servers: str, topics: list[str]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        await asyncio.wait_for(admin.start(), START_TIMEOUT_S)
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):  # another box made it meanwhile
                    await admin.create_topics([NewTopic(t, num_partitions=self.partitions, replication_factor=1)
                                               for t in missing])
        finally:
            await admin.close()

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                msg = await self._consumer.getone()
            except KafkaError as exc:
                log.warning("jobs: kafka read failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            model = self._model_of.get(msg.topic)
            if model is not None:
                self._inbox[model].put_nowait(msg)

    async def announce(self, job: Job) -> None:
        if self._producer is None:
            raise RuntimeError("the Kafka queue is not started")
        # Keyed by the job id: the jobs of one model spread over its partitions, so every box of the group
        # that holds some of them takes a share (one partition would feed one box at a time).
        await self._producer.send_and_wait(topic_for(self.prefix, job.model), job.id.encode(), key=job.id.encode())

    async def take(self, model: str) -> Job:
        inbox = self._inbox[model]
        while True:
            if self._stopped:
                await asyncio.Future()  # drained: nothing more is claimed here; the runner's close cancels this
            msg = await inbox.get()
            if self._stopped:
                continue  # not committed: the group delivers it to another box
            job_id = (msg.value or b"").decode("utf-8", "replace")
            job = await self.store.ajob_claim(self.owner, job_id=job_id)
            # Claimed (or not queued any more: done, cancelled, taken by another box): the message is spent.
            # A drain that stopped the consumer meanwhile leaves it uncommitted: redelivered, the claim skips it.
            if self._consumer is not None:
                with contextlib.suppress(KafkaError):
                    await self._consumer.commit({TopicPartition(msg.topic, msg.partition): msg.offset + 1})
            if job is not None:
                return job

    async def stop_taking(self) -> None:
        self._stopped = True
        await self._stop_consumer()
        for inbox in self._inbox.values():
            while not inbox.empty():
                inbox.get_nowait()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "brokers": self.brokers, "group": self.group, "partitions": self.partitions,
                "topics": sorted(self._model_of)}

    async def _stop_consumer(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()  # leaves the group: its partitions are reassigned to the other boxes

    async def close(self) -> None:
        await self._stop_consumer()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
