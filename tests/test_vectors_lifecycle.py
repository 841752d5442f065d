"""A vector store's lifecycle through the official `openai` client (AsyncOpenAI over httpx's ASGI transport)
against the real retrieval API and service, a real SQLite store and an embedded Chroma, with an injected clock
and an embedder the test controls: cancelling a file batch (files still in progress are cancelled with none
of their chunks left, files already completed stay, a cancel recorded before a restart is finished at the
next start), `expires_after` (expires_at moved by activity, status `expired`, search and attach refused, the
maintenance pass deletes it) and a vector store file's content while it is indexed.

The embedder gives each text a deterministic vector (hashed words) and holds any text containing HOLD until
the test releases it, so which file is in progress when the cancel arrives is decided, not raced."""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from standins.launch import async_wait_until

from appliance.config import StoreConfig, parse_config
from appliance.gateway.exchange import Exchange
from appliance.store import open_store
from appliance.store.maintenance import Maintenance
from appliance.vectors.api import RetrievalApi
from appliance.vectors.service import Retrieval

DAY = 86400.0
STATIC_100 = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GatedEmbedder:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0  # embeddings waiting for the release now

    async def embed(self, model: str, texts: list[str], key: Any) -> list[list[float]]:
        if any("HOLD" in t for t in texts):
            self.held += 1
            try:
                await self.release.wait()
            finally:
                self.held -= 1
        return [_vector(t) for t in texts]


def _vector(text: str, dim: int = 64) -> list[float]:
    v = [0.0] * dim
    v[0] = 0.1
    for word in text.lower().split():
        v[int(hashlib.sha1(word.encode()).hexdigest(), 16) % dim] += 1.0
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


@dataclass
class Box:
    service: Retrieval
    client: openai.AsyncOpenAI
    embedder: GatedEmbedder
    clock: Clock
    tmp: Path


def _service(tmp: Path, clock: Clock, embedder: GatedEmbedder) -> Retrieval:
    config = parse_config({"server": {"state_dir": str(tmp)},
                           "engines": {"embed": {"kind": "worker", "worker": "embed", "model_path": "x", "port": 9}},
                           "models": {"minilm": {"engine": "embed", "modality": "embedding"}},
                           "vectors": {"backend": "chroma", "embed_batch": 1}})
    return Retrieval(config, open_store("", tmp), embedder, tmp / "files", clock=clock)  # type: ignore[arg-type]


def _client(service: Retrieval) -> openai.AsyncOpenAI:
    api = RetrievalApi(service, 1 << 20)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await api.handle(Exchange(scope, receive, send), None)

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://appliance.test")
    return openai.AsyncOpenAI(api_key="unused", base_url="http://appliance.test/v1", http_client=http, max_retries=0)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    clock, embedder = Clock(1_800_000_000.0), GatedEmbedder()
    service = _service(tmp_path, clock, embedder)
    await service.start()
    client = _client(service)
    try:
        yield Box(service, client, embedder, clock, tmp_path)
    finally:
        embedder.release.set()
        await client.close()
        await service.close()
        service.store.close()


async def _upload(client: openai.AsyncOpenAI, name: str, text: str) -> str:
    return (await client.files.create(file=(name, io.BytesIO(text.encode())), purpose="assistants")).id


def _held_text(i: int) -> str:
    """Three chunks of 100 words that embed at once, then a fourth that waits for the release."""
    return " ".join(f"alpha{i} beta gamma" for _ in range(100)) + " HOLD"


async def test_cancelling_a_batch_stops_the_files_in_progress_and_keeps_the_completed(box: Box) -> None:
    client, db = box.client, await box.service.backend()
    fast = await _upload(client, "fast.txt", "whales eat krill in the cold ocean")
    held = [await _upload(client, f"held{i}.txt", _held_text(i)) for i in range(3)]
    vs = await client.vector_stores.create(name="cancel")
    batch = await client.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=[fast, *held],
                                                          chunking_strategy=STATIC_100)  # type: ignore[arg-type]
    assert batch.status == "in_progress"

    async def state() -> dict[str, str]:
        page = await client.vector_stores.file_batches.list_files(vector_store_id=vs.id, batch_id=batch.id)
        return {f.id: f.status for f in page.data}
    # two indexers: fast completes, held[0] and held[1] wrote 3 chunks each and wait; held[2] never started
    await async_wait_until(lambda: db.count(vs.id) == 7, 30, message="3 + 3 + 1 chunks written")
    assert (await state()) == {fast: "completed", held[0]: "in_progress", held[1]: "in_progress",
                               held[2]: "in_progress"}

    cancelled = await client.vector_stores.file_batches.cancel(batch.id, vector_store_id=vs.id)
    assert cancelled.status in ("cancelling", "cancelled")

    async def finished() -> Any:
        b = await client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=vs.id)
        return b if b.status == "cancelled" else None
    done = await async_wait_until(finished, 30, message="the batch to be cancelled")
    assert (done.file_counts.completed, done.file_counts.cancelled, done.file_counts.in_progress) == (1, 3, 0)
    assert (await state()) == {fast: "completed", **dict.fromkeys(held, "cancelled")}
    assert db.count(vs.id) == 1  # nothing half-written: the held files' six chunks are gone
    for fid in held:
        content = await client.vector_stores.files.content(fid, vector_store_id=vs.id)
        assert content.data == []
    hits = await client.vector_stores.search(vector_store_id=vs.id, query="alpha0 beta gamma whales")
    assert [h.file_id for h in hits.data] == [fast]
    store = await client.vector_stores.retrieve(vs.id)
    assert store.status == "completed" and store.file_counts.cancelled == 3

    box.embedder.release.set()  # a held embedding that returns now writes nothing
    await async_wait_until(lambda: box.embedder.held == 0 or None, 10, message="the held embedding to return")
    assert db.count(vs.id) == 1
    again = await client.vector_stores.file_batches.cancel(batch.id, vector_store_id=vs.id)
    assert again.status == "cancelled"  # asking twice is harmless
    other = await client.vector_stores.file_batches.create_and_poll(vector_store_id=vs.id, file_ids=[
        await _upload(client, "b.txt", "bicycles need oiled chains")], poll_interval_ms=20)
    assert other.status == "completed"
    with pytest.raises(openai.ConflictError) as late:
        await client.vector_stores.file_batches.cancel(other.id, vector_store_id=vs.id)
    assert "only a batch in progress" in str(late.value)
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.file_batches.cancel("vsfb_nope", vector_store_id=vs.id)

    row = await box.service.vector_store(None, vs.id)  # a rebuild embeds the kept files again, not the cancelled
    await box.service.reindex(None, row, "minilm")
    await box.service.wait_indexed()
    assert (await state()) == {fast: "completed", **dict.fromkeys(held, "cancelled")}
    assert db.count(vs.id) == 2  # fast.txt and b.txt


async def test_a_cancel_recorded_before_a_restart_is_finished_at_the_next_start(tmp_path: Path) -> None:
    clock, embedder = Clock(1_800_000_000.0), GatedEmbedder()
    first = _service(tmp_path, clock, embedder)
    await first.start()
    client = _client(first)
    fid = await _upload(client, "held.txt", _held_text(0))
    vs = await client.vector_stores.create(name="restart")
    batch = await client.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=[fid],
                                                          chunking_strategy=STATIC_100)  # type: ignore[arg-type]
    db = await first.backend()
    await async_wait_until(lambda: db.count(vs.id) == 3, 30, message="three chunks written")
    await client.close()
    await first.close()  # the daemon stops mid-file: it stays in_progress, its chunks were dropped
    assert first.store.batch_cancel(batch.id, clock())  # the cancel was recorded, the stop came first
    first.store.close()

    second = _service(tmp_path, clock, GatedEmbedder())
    await second.start()
    client = _client(second)
    try:
        async def cancelled() -> Any:
            b = await client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=vs.id)
            return b if b.status == "cancelled" else None
        done = await async_wait_until(cancelled, 30, message="the cancel to be finished")
        assert done.file_counts.cancelled == 1
        assert (await second.backend()).count(vs.id) == 0
    finally:
        await client.close()
        await second.close()
        second.store.close()


async def test_expires_after_moves_with_activity_then_expires_and_is_deleted_by_maintenance(box: Box) -> None:
    client, clock = box.client, box.clock
    t0 = clock.now
    fid = await _upload(client, "whales.txt", "blue whales eat krill")
    vs = await client.vector_stores.create(name="short-lived", file_ids=[fid],
                                           expires_after={"anchor": "last_active_at", "days": 2})
    keep = await client.vector_stores.create(name="kept")
    assert vs.expires_after is not None and vs.expires_after.days == 2
    assert vs.expires_at == int(t0 + 2 * DAY) and vs.last_active_at == int(t0)

    async def indexed() -> bool:
        return (await client.vector_stores.retrieve(vs.id)).status == "completed"
    await async_wait_until(indexed, 30, message="indexed")

    clock.now = t0 + 1.5 * DAY  # a search is activity: expires_at moves
    assert (await client.vector_stores.search(vector_store_id=vs.id, query="krill")).data
    moved = await client.vector_stores.retrieve(vs.id)
    assert moved.status == "completed" and moved.expires_at == int(t0 + 3.5 * DAY)
    assert moved.last_active_at == int(t0 + 1.5 * DAY)

    clock.now = t0 + 3.5 * DAY
    expired = await client.vector_stores.retrieve(vs.id)
    assert expired.status == "expired"
    with pytest.raises(openai.ConflictError) as refused:
        await client.vector_stores.search(vector_store_id=vs.id, query="krill")
    assert "expired" in str(refused.value) and refused.value.body["code"] == "vector_store_expired"  # type: ignore[index]
    with pytest.raises(openai.ConflictError):
        await client.vector_stores.files.create(vector_store_id=vs.id,
                                                file_id=await _upload(client, "late.txt", "too late"))
    assert (await client.vector_stores.retrieve(vs.id)).status == "expired"  # refusals are not activity

    maintenance = Maintenance(box.service.store, StoreConfig(), jobs_dir=box.tmp / "jobs")
    maintenance.add_periodic("vector-store-expiry", lambda _now: box.service.expire(clock()), 3600)
    maintenance.start()  # the pass runs at once, then hourly
    try:
        async def gone() -> bool:
            try:
                await client.vector_stores.retrieve(vs.id)
            except openai.NotFoundError:
                return True
            return False
        await async_wait_until(gone, 30, message="the maintenance pass to delete the expired store")
        assert "vector-store-expiry" in maintenance.jobs()
    finally:
        maintenance.stop()
    assert (await box.service.backend()).count(vs.id) == 0
    assert (await client.vector_stores.retrieve(keep.id)).status == "completed"  # no policy: never expires
    assert await box.service.expire(clock.now + 1000 * DAY) == []


async def test_expires_after_is_checked_and_can_be_changed_or_removed(box: Box) -> None:
    client = box.client
    for value, param in (({"anchor": "created_at", "days": 1}, "expires_after.anchor"),
                         ({"anchor": "last_active_at", "days": 0}, "expires_after.days"),
                         ({"anchor": "last_active_at", "days": 366}, "expires_after.days"),
                         ({"days": 3}, "expires_after")):
        with pytest.raises(openai.BadRequestError) as bad:
            await client.vector_stores.create(name="x", expires_after=value)  # type: ignore[arg-type]
        assert bad.value.body["param"] == param, bad.value.body  # type: ignore[index]
    assert (await client.vector_stores.list()).data == []  # nothing written
    vs = await client.vector_stores.create(name="policy", description="kept, not dropped")
    assert vs.expires_after is None and vs.expires_at is None
    assert (await client.vector_stores.retrieve(vs.id)).model_extra == {
        "embedding_model": "minilm", "embedding_dimension": None, "description": "kept, not dropped"}
    box.clock.now += 10.0
    set_ = await client.vector_stores.update(vs.id, expires_after={"anchor": "last_active_at", "days": 7})
    assert set_.expires_at == int(box.clock.now + 7 * DAY)  # a change is activity
    cleared = await client.vector_stores.update(vs.id, expires_after=None)
    assert cleared.expires_after is None and cleared.expires_at is None


async def test_a_files_content_is_its_chunks_and_waits_for_indexing(box: Box) -> None:
    client = box.client
    fid = await _upload(client, "held.txt", _held_text(7))
    vs = await client.vector_stores.create(name="content")
    await client.vector_stores.files.create(vector_store_id=vs.id, file_id=fid,
                                            chunking_strategy=STATIC_100)  # type: ignore[arg-type]
    with pytest.raises(openai.ConflictError) as busy:
        await client.vector_stores.files.content(fid, vector_store_id=vs.id)
    assert busy.value.body["code"] == "vector_store_file_not_ready"  # type: ignore[index]
    box.embedder.release.set()

    async def completed() -> bool:
        return (await client.vector_stores.files.retrieve(fid, vector_store_id=vs.id)).status == "completed"
    await async_wait_until(completed, 30, message="indexed")
    page = await client.vector_stores.files.content(fid, vector_store_id=vs.id)
    texts = [part.text for part in page.data]
    assert [part.type for part in page.data] == ["text"] * 4 and texts[3] == "HOLD"
    assert " ".join(t or "" for t in texts) == _held_text(7)  # no overlap: the chunks are the text, in order
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.files.content("file-nope", vector_store_id=vs.id)
