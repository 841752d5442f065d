"""The worker's job registry (services.jobs) and `outlast`, driven directly: cancellation between units
of work, ids cancelled before their request arrives, and work that outlives a cancelled caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.jobs import Cancelled, Jobs, outlast


async def test_a_cancelled_job_stops_at_its_next_unit_and_is_reported() -> None:
    jobs = Jobs()
    job = jobs.open("r1")
    job.step()
    job.step()
    assert jobs.cancel("r1") is job and job.cancelled
    with pytest.raises(Cancelled):
        job.step()  # the unit under way when the cancel came is the last one
    jobs.close(job)
    assert job.done.is_set()
    assert jobs.stats() == {"busy": False, "steps": 3, "jobs_cancelled": 1,
                            "last_cancelled": {"request_id": "r1", "steps": 3, "steps_after_cancel": 1}}


async def test_an_id_cancelled_before_its_request_arrives_starts_cancelled() -> None:
    jobs = Jobs()
    assert jobs.cancel("early") is None
    job = jobs.open("early")
    with pytest.raises(Cancelled):
        job.check()
    jobs.close(job)
    assert not jobs.open("early").cancelled  # the tombstone is used up by the first arrival


async def test_outlast_waits_for_the_model_thread_when_its_caller_is_cancelled() -> None:
    release = threading.Event()
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, release.wait, 30.0)
    cancelled: list[bool] = []
    waiting = asyncio.Event()

    def on_cancel() -> None:
        cancelled.append(True)
        release.set()  # the model thread's job notices its cancel and ends

    async def call() -> bool:
        waiting.set()  # the rest of this step runs up to outlast's first wait
        return await outlast(work, on_cancel)

    caller = asyncio.ensure_future(call())
    await waiting.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cancelled == [True] and work.done()  # the caller ended only after the work did
