"""The JobQueue contract on both backends: the local durable queue and Kafka (a real Tansu broker)."""

from __future__ import annotations

import asyncio

from standins.launch import async_wait_until

from appliance.store import JobState, NewJob
from appliance.store.sqlcore import SqlStore

from .conftest import QueueFactory

TAKE_TIMEOUT_S = 20.0


def _new(store: SqlStore, jid: str, model: str = "tts") -> None:
    store.job_create(NewJob(jid, "/v1/audio/speech", model, "-", None, "h", "{}", "http://x"))


def _in_order(queues: QueueFactory, taken: list[str], submitted: list[str]) -> bool:
    """The local queue takes a model's jobs in submission order. Kafka keeps order within a partition
    only: a model's jobs spread over its partitions (jobs.partitions) so that several boxes share them,
    and one box reads its partitions interleaved. Either way each job is taken exactly once."""
    if queues.backend == "kafka":
        return sorted(taken) == sorted(submitted) and len(taken) == len(set(taken))
    return taken == submitted


async def test_each_announced_job_is_taken_once_in_order(queues: QueueFactory) -> None:
    queue = queues("box-a")
    await queue.start(["tts", "img"])
    for i in range(5):
        _new(queues.store, f"j{i}")  # type: ignore[arg-type]
        job = queues.store.job_get(f"j{i}")
        assert job is not None
        await queue.announce(job)
    taken = [await asyncio.wait_for(queue.take("tts"), TAKE_TIMEOUT_S) for _ in range(5)]
    assert _in_order(queues, [j.id for j in taken], [f"j{i}" for i in range(5)])
    assert all(j.state is JobState.RUNNING and j.owner == "box-a" for j in taken)


async def test_a_cancelled_job_is_skipped(queues: QueueFactory) -> None:
    queue = queues("box-a")
    await queue.start(["tts"])
    for jid in ("gone", "kept"):
        _new(queues.store, jid)  # type: ignore[arg-type]
    queues.store.job_cancel("gone")
    for jid in ("gone", "kept"):
        job = queues.store.job_get(jid)
        assert job is not None
        await queue.announce(job)
    job = await asyncio.wait_for(queue.take("tts"), TAKE_TIMEOUT_S)
    assert job.id == "kept"


async def test_two_boxes_never_take_the_same_job(queues: QueueFactory) -> None:
    boxes = [queues("box-a"), queues("box-b")]
    for box in boxes:
        await box.start(["tts"])
    for i in range(10):
        _new(queues.store, f"m{i}")  # type: ignore[arg-type]
        job = queues.store.job_get(f"m{i}")
        assert job is not None
        await boxes[i % 2].announce(job)

    taken: list[str] = []

    async def drain(box: object) -> None:
        while len(taken) < 10:
            job = await box.take("tts")  # type: ignore[attr-defined]
            taken.append(job.id)

    tasks = [asyncio.ensure_future(drain(b)) for b in boxes]
    try:
        await async_wait_until(lambda: len(taken) >= 10 or None, TAKE_TIMEOUT_S, message="ten jobs taken")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(taken) == sorted(f"m{i}" for i in range(10))


async def test_a_requeued_job_is_taken_again_after_a_restart(queues: QueueFactory) -> None:
    first = queues("box-a")
    await first.start(["tts"])
    _new(queues.store, "r1")  # type: ignore[arg-type]
    job = queues.store.job_get("r1")
    assert job is not None
    await first.announce(job)
    running = await asyncio.wait_for(first.take("tts"), TAKE_TIMEOUT_S)
    await first.close()  # the box dies with the job running
    again = queues("box-a")
    await again.start(["tts"])
    for requeued in queues.store.jobs_requeue("box-a"):  # what JobRunner.start does
        await again.announce(requeued)
    retaken = await asyncio.wait_for(again.take("tts"), TAKE_TIMEOUT_S)
    assert retaken.id == running.id and retaken.attempts == 2


async def test_jobs_queued_before_the_start_are_taken_oldest_first(queues: QueueFactory) -> None:
    # Queued while no queue ran (or while the broker was away at submit time): nobody announced them.
    for jid in ("early", "later"):
        _new(queues.store, jid)  # type: ignore[arg-type]
    queue = queues("box-a")
    await queue.start(["tts"])
    taken = [await asyncio.wait_for(queue.take("tts"), TAKE_TIMEOUT_S) for _ in range(2)]
    assert _in_order(queues, [j.id for j in taken], ["early", "later"])


async def test_a_drained_box_claims_nothing_and_its_jobs_go_to_another_box(queues: QueueFactory) -> None:
    drained, other = queues("box-a"), queues("box-b")
    for box in (drained, other):
        await box.start(["tts"])
    await drained.stop_taking()
    for i in range(3):
        _new(queues.store, f"d{i}")  # type: ignore[arg-type]
        job = queues.store.job_get(f"d{i}")
        assert job is not None
        await drained.announce(job)  # announcing (a retry of a job that ran here) still works
    taken = [await asyncio.wait_for(other.take("tts"), TAKE_TIMEOUT_S) for _ in range(3)]
    assert sorted(j.id for j in taken) == ["d0", "d1", "d2"]
    assert all(j.owner == "box-b" for j in taken)
    late = asyncio.ensure_future(drained.take("tts"))
    _new(queues.store, "d3")  # type: ignore[arg-type]
    job = queues.store.job_get("d3")
    assert job is not None
    await drained.announce(job)  # the drained box is waiting too: the live box still gets the job
    assert (await asyncio.wait_for(other.take("tts"), TAKE_TIMEOUT_S)).id == "d3"
    assert not late.done()  # holding nothing
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)


async def test_two_boxes_share_one_models_jobs(queues: QueueFactory) -> None:
    """Kafka: a model's topic has several partitions and messages are keyed by job id, so each box of the
    group takes a share of one model's jobs (one partition would feed one box at a time). Local: both poll."""
    boxes = [queues("box-a"), queues("box-b")]
    for box in boxes:
        await box.start(["tts"])
    if queues.backend == "kafka":  # both in the group before anything is sent: the partitions are split
        consumers = [box._consumer for box in boxes]  # type: ignore[attr-defined]

        def split() -> bool | None:
            return (all(c is not None and c.assignment() for c in consumers)
                    and sum(len(c.assignment()) for c in consumers) == 8) or None

        await async_wait_until(split, TAKE_TIMEOUT_S, message="the partitions split between the two boxes")
    ids = [f"s{i:02d}" for i in range(16)]
    for jid in ids:
        _new(queues.store, jid)  # type: ignore[arg-type]
        job = queues.store.job_get(jid)
        assert job is not None
        await boxes[0].announce(job)
    owners: dict[str, str] = {}

    async def work(box: object, name: str) -> None:
        while True:
            job = await box.take("tts")  # type: ignore[attr-defined]
            owners[job.id] = name
            # A box busy with a job takes no other until the other box has taken one (or none is left):
            # with one partition (or a queue only one box reads) this waits until the deadline and fails.
            await async_wait_until(lambda: len(owners) >= len(ids) or any(o != name for o in owners.values()) or None,
                                   TAKE_TIMEOUT_S, message=f"the other box to take a job while {name} is busy")

    tasks = [asyncio.ensure_future(work(b, n)) for b, n in zip(boxes, ("box-a", "box-b"), strict=True)]
    try:
        await async_wait_until(lambda: len(owners) >= len(ids) or None, TAKE_TIMEOUT_S, message="all jobs taken")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(owners) == ids
    assert set(owners.values()) == {"box-a", "box-b"}, owners
