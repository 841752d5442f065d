"""Retrieval on the box: uploaded files, vector stores, indexing and search.

Owns the files' bytes (`<state>/data/files/<id>`), the indexing tasks, and the vector database handle
(opened on first use; the daemon is the only process that opens an embedded Chroma directory). Records
live in the appliance's store (`store.retrieval`); chunks live in the vector database, one collection
per vector store. Attaching a file answers at once with status `in_progress`; a task parses, chunks,
embeds (through the gateway's own embeddings handler, under the model's residency lease) and stores,
then marks it `completed` or `failed` with `last_error`; a failure removes whatever chunks it wrote. At
start, attachments still `in_progress` (the daemon stopped mid-way) are indexed again.
A store remembers the embedding model and dimension that built it: when the configured model differs,
search and attach are refused (`appliance vectors reindex` rebuilds it). Chunk sizes count the embedding
model's own tokens (appliance.vectors.tokens, loaded at the first attach).
A file batch can be cancelled: the cancel is recorded on the batch, its files still in progress are
stopped and marked `cancelled` with their chunks removed, files already completed stay. An indexing task
and a cancel race to end a file through a conditional status change, so exactly one of them wins.
A store with `expires_after` expires `days` after its last activity (create, attach, modify, search);
an expired one reports status `expired`, refuses search and attach, and `expire` (an hourly maintenance
job) deletes it. Time comes from `clock`, injected by tests.
It must not speak HTTP (appliance.vectors.api does) nor know which vector database it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..gateway.keys import ApiKey
from ..store import Store
from . import backend as backends
from . import chunking, filters, parsing, tokens
from .backend import Chunk, Hit, VectorBackend, VectorsError
from .embedder import EmbeddingFailed, GatewayEmbedder
from .views import expires_at

log = logging.getLogger("appliance.vectors")
INDEXERS = 2  # files indexed at once (each embeds in batches under the model's lease)
EXPIRY_EVERY_S = 3600.0  # how often the maintenance job deletes expired stores


class RetrievalError(Exception):
    """A refused request: HTTP status, message, the field it names and a code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


@dataclass(frozen=True)
class SearchHit:
    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any]
    text: str


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def embedding_model(config: Config) -> str:
    if config.vectors.embedding_model:
        return config.vectors.embedding_model
    return next((mid for mid, m in config.models.items() if m.modality == "embedding"), "")


def embedding_model_path(config: Config) -> str:
    """Where the embedding model's engine loads it from (a worker's `model_path`, vLLM's `model`), or ""."""
    model = config.models.get(embedding_model(config))
    engine = config.engines.get(model.engine) if model is not None else None
    return str(getattr(engine, "model_path", "") or getattr(engine, "model", "") or "")


class Retrieval:
    def __init__(self, config: Config, store: Store, embedder: GatewayEmbedder, files_dir: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._tokenizer: tokens.Tokenizer | None = None
        self._cancels: set[asyncio.Task[None]] = set()
        self.store = store
        self.embedder = embedder
        self.files_dir = files_dir
        self._backend: VectorBackend | None = None
        self._open_lock = asyncio.Lock()
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(INDEXERS)
        self.problem = backends.check(config)  # one line at start; vector routes answer 503 with it

    # -- lifecycle
    async def start(self) -> None:
        self.files_dir.mkdir(parents=True, exist_ok=True)
        if self.problem:
            log.error("vectors: %s (the /v1/vector_stores routes answer 503 until it is fixed)", self.problem)
            return
        name, uri = backends.selected(self.config)
        log.info("vectors: %s at %s (opened on first use), embedding model %r", name, uri,
                 embedding_model(self.config) or "none configured")
        pending = await asyncio.to_thread(self.store.attach_list, status="in_progress")
        for row in pending:
            log.warning("vector store %s: file %s was being indexed when the daemon stopped; indexing again",
                        row["vector_store_id"], row["file_id"])
            self._schedule(row["vector_store_id"], row["file_id"], None, resumed=True)

    async def close(self) -> None:
        tasks = [*self._cancels, *self._tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._backend is not None:
            await asyncio.to_thread(self._backend.close)
            self._backend = None

    async def tokenizer(self) -> tokens.Tokenizer:
        """The embedding model's tokenizer (or the fallback), read once at the first attach."""
        if self._tokenizer is None:
            tok = await asyncio.to_thread(tokens.for_model, embedding_model_path(self.config),
                                          self.config.state_path())
            log.info("vectors: a chunk's tokens are %s", tok.name)
            self._tokenizer = tok
        return self._tokenizer

    def expired(self, row: dict[str, Any]) -> bool:
        at = expires_at(row)
        return at is not None and self.clock() >= at

    def _live(self, row: dict[str, Any]) -> None:
        if self.expired(row):
            raise RetrievalError(409, f"vector store {row['id']} expired (expires_after: {row['expires_after']}, "
                                      "no activity since); it is deleted by the next maintenance pass",
                                 param="vector_store_id", code="vector_store_expired")

    async def _touch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Activity on the store: `last_active_at` now, which moves `expires_at`."""
        now = self.clock()
        await asyncio.to_thread(self.store.vstore_update, row["id"], {"last_active": now})
        return {**row, "last_active": now}

    async def backend(self) -> VectorBackend:
        if self.problem:
            raise RetrievalError(503, f"vector stores are unavailable: {self.problem}", code="vectors_unavailable")
        async with self._open_lock:
            if self._backend is None:
                try:
                    self._backend = await asyncio.to_thread(backends.open_backend, self.config)
                except VectorsError as exc:
                    raise RetrievalError(503, str(exc), code="vectors_unavailable") from None
                except Exception as exc:  # the database did not answer: one line, not a trace
                    raise RetrievalError(503, f"the vector database cannot be opened: {type(exc).__name__}: "
                                              f"{exc}", code="vectors_unavailable") from None
                log.info("vectors: opened %s", self._backend.describe())
        return self._backend

    # -- files
    async def upload(self, key: ApiKey | None, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        if not data:
            raise RetrievalError(400, f"file {filename!r} is empty", param="file", code="empty_file")
        row: dict[str, Any] = {"id": new_id("file-"), "key_id": _owner(key), "filename": filename, "purpose": purpose,
               "bytes": len(data), "created": self.clock()}

        def write() -> None:
            path = self.files_dir / row["id"]
            tmp = path.with_suffix(".partial")
            tmp.write_bytes(data)
            tmp.replace(path)
            try:
                self.store.file_insert(row)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        await asyncio.to_thread(write)
        return row

    async def file(self, key: ApiKey | None, file_id: str) -> dict[str, Any]:
        row = await asyncio.to_thread(self.store.file_get, file_id) if file_id else None
        if row is None or not _visible(row, key):
            raise RetrievalError(404, f"no file {file_id!r}", param="file_id", code="file_not_found")
        return row

    async def files(self, key: ApiKey | None, purpose: str | None) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self.store.file_list, purpose)
        return [r for r in rows if _visible(r, key)]

    async def content(self, key: ApiKey | None, file_id: str) -> tuple[dict[str, Any], bytes]:
        row = await self.file(key, file_id)
        return row, await asyncio.to_thread((self.files_dir / row["id"]).read_bytes)

    async def delete_file(self, key: ApiKey | None, file_id: str) -> None:
        """The file, its bytes, and its chunks in every store it is attached to."""
        row = await self.file(key, file_id)
        attached = await asyncio.to_thread(self.store.attach_list, file_id=file_id)
        for a in attached:
            await self._cancel_indexing(a["vector_store_id"], file_id)
        if attached:
            db = await self.backend()
            for a in attached:
                await asyncio.to_thread(db.delete_file, a["vector_store_id"], file_id)
        await asyncio.to_thread(self.store.file_delete, row["id"])
        (self.files_dir / row["id"]).unlink(missing_ok=True)

    # -- vector stores
    async def create_store(self, key: ApiKey | None, name: str | None, metadata: dict[str, str],
                           file_ids: list[str], strategy: chunking.Strategy,
                           expires_after: dict[str, Any] | None = None, description: str | None = None
                           ) -> dict[str, Any]:
        model = embedding_model(self.config)
        if not model:
            raise RetrievalError(400, "no embedding model is configured (models.<id>.modality = \"embedding\")",
                                 code="no_embedding_model")
        await self.backend()
        files = [await self._attachable(key, fid, f"file_ids[{i}]") for i, fid in enumerate(file_ids)]
        now = self.clock()
        row = {"id": new_id("vs_"), "key_id": _owner(key), "name": name, "metadata": json.dumps(metadata),
               "embedding_model": model, "dimension": None, "created": now, "last_active": now,
               "expires_after": json.dumps(expires_after) if expires_after else None, "description": description}
        await asyncio.to_thread(self.store.vstore_insert, row)
        if files:
            await self._attach(row, files, {}, strategy, None, key)
        return row

    async def vector_store(self, key: ApiKey | None, store_id: str) -> dict[str, Any]:
        row = await asyncio.to_thread(self.store.vstore_get, store_id) if store_id else None
        if row is None or not _visible(row, key):
            raise RetrievalError(404, f"no vector store {store_id!r}", param="vector_store_id",
                                 code="vector_store_not_found")
        return row

    async def vector_stores(self, key: ApiKey | None) -> list[dict[str, Any]]:
        return [r for r in await asyncio.to_thread(self.store.vstore_list) if _visible(r, key)]

    async def attachments(self, store_id: str, **where: Any) -> list[dict[str, Any]]:
        return await asyncio.to_thread(lambda: self.store.attach_list(store_id, **where))

    async def modify_store(self, row: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """Change name, metadata or expires_after; a change is activity (a live store's expiry moves)."""
        if not self.expired(row):
            fields = {**fields, "last_active": self.clock()}
        await asyncio.to_thread(self.store.vstore_update, row["id"], fields)
        return {**row, **fields}

    async def expire(self, now: float) -> list[str]:
        """Delete every store expired at `now` (the maintenance job); their ids."""
        gone = []
        for row in await asyncio.to_thread(self.store.vstore_list):
            at = expires_at(row)
            if at is not None and now >= at:
                await self.delete_store(row)
                log.info("vector store %s expired (no activity since %s) and was deleted", row["id"],
                         time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(row["last_active"]))))
                gone.append(row["id"])
        return gone

    async def delete_store(self, row: dict[str, Any]) -> None:
        for a in await self.attachments(row["id"]):
            await self._cancel_indexing(row["id"], a["file_id"])
        db = await self.backend()
        await asyncio.to_thread(db.drop, row["id"])
        await asyncio.to_thread(self.store.vstore_delete, row["id"])

    async def reindex(self, key: ApiKey | None, row: dict[str, Any], model: str) -> dict[str, Any]:
        """Rebuild the store with `model` (the configured embedding model): its chunks are dropped, the store
        takes the model and its files go back to in_progress, each embedded again from its kept bytes (a
        cancelled file stays cancelled)."""
        self._live(row)
        configured = embedding_model(self.config)
        if model != configured:
            raise RetrievalError(400, f"model: {model!r} is not vectors.embedding_model ({configured!r}); a store "
                                      "is searched with the configured model, so it is rebuilt with it",
                                 param="model", code="model_not_supported")
        attached = await self.attachments(row["id"])
        for a in attached:
            await self._cancel_indexing(row["id"], a["file_id"])
        db = await self.backend()
        await asyncio.to_thread(db.drop, row["id"])
        fields = {"embedding_model": model, "dimension": None}
        await asyncio.to_thread(self.store.vstore_update, row["id"], fields)
        attached = [a for a in attached if a["status"] != "cancelled"]
        for a in attached:
            await asyncio.to_thread(self.store.attach_update, row["id"], a["file_id"], {
                "status": "in_progress", "last_error": None, "usage_bytes": 0, "chunks": 0})
            self._schedule(row["id"], a["file_id"], key)
        log.warning("vector store %s: rebuilding %d file(s) with embedding model %r (was %r)", row["id"],
                    len(attached), model, row["embedding_model"])
        return {**row, **fields}

    # -- attaching
    async def attach(self, key: ApiKey | None, row: dict[str, Any], file_ids: list[str], attributes: dict[str, Any],
                     strategy: chunking.Strategy, batch: bool, param: str) -> str | None:
        """Attach `file_ids` (a batch when `batch`); returns the batch id."""
        self._live(row)
        self._same_model(row)
        await self.backend()
        files = []
        for i, fid in enumerate(file_ids):
            if await asyncio.to_thread(self.store.attach_get, row["id"], fid) is not None:
                raise RetrievalError(409, f"file {fid!r} is already attached to vector store {row['id']}",
                                     param=f"{param}[{i}]" if batch else param, code="file_already_attached")
            files.append(await self._attachable(key, fid, f"{param}[{i}]" if batch else param))
        row = await self._touch(row)
        return await self._attach(row, files, attributes, strategy, new_id("vsfb_") if batch else None, key)

    async def _attachable(self, key: ApiKey | None, file_id: str, param: str) -> dict[str, Any]:
        if not isinstance(file_id, str):
            raise RetrievalError(400, f"{param}: must be a file id (string)", param=param)
        try:
            f = await self.file(key, file_id)
        except RetrievalError as err:
            err.param = param
            raise
        if not parsing.supported(f["filename"]):
            raise RetrievalError(400, f"{param}: file {file_id} ({f['filename']!r}) has an unsupported type; "
                                      f"supported: {', '.join(parsing.SUPPORTED)}", param=param,
                                 code="unsupported_file")
        return f

    async def _attach(self, row: dict[str, Any], files: list[dict[str, Any]], attributes: dict[str, Any],
                      strategy: chunking.Strategy, batch_id: str | None, key: ApiKey | None) -> str | None:
        if strategy.auto:  # OpenAI's 800/400, within what the embedding model reads
            strategy = chunking.auto_for((await self.tokenizer()).window)
        now = self.clock()
        rows = [{"vector_store_id": row["id"], "file_id": f["id"], "batch_id": batch_id, "status": "in_progress",
                 "last_error": None, "attributes": json.dumps(attributes), "chunking": json.dumps(strategy.view()),
                 "usage_bytes": 0, "chunks": 0, "created": now} for f in files]
        batch = {"id": batch_id, "vector_store_id": row["id"], "created": now} if batch_id else None
        await asyncio.to_thread(self.store.attach_insert, rows, batch)
        for f in files:
            self._schedule(row["id"], f["id"], key)
        return batch_id

    async def detach(self, row: dict[str, Any], file_id: str) -> None:
        if await asyncio.to_thread(self.store.attach_get, row["id"], file_id) is None:
            raise RetrievalError(404, f"file {file_id!r} is not attached to vector store {row['id']}",
                                 param="file_id", code="file_not_found")
        await self._cancel_indexing(row["id"], file_id)
        db = await self.backend()
        await asyncio.to_thread(db.delete_file, row["id"], file_id)
        await asyncio.to_thread(self.store.attach_delete, row["id"], file_id)

    # -- indexing
    def _schedule(self, store_id: str, file_id: str, key: ApiKey | None, resumed: bool = False) -> None:
        """Index the file; `resumed`: it was in progress when the daemon stopped (its batch's cancel, if
        one was recorded, is honoured first)."""
        task = asyncio.ensure_future(self._index(store_id, file_id, key, resumed))
        self._tasks[(store_id, file_id)] = task
        task.add_done_callback(lambda _t: self._tasks.pop((store_id, file_id), None))

    async def _cancel_indexing(self, store_id: str, file_id: str) -> None:
        task = self._tasks.get((store_id, file_id))
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_indexed(self) -> None:
        """Until no indexing task runs (the CLI and tests poll the API instead)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _index(self, store_id: str, file_id: str, key: ApiKey | None, resumed: bool) -> None:
        async with self._slots:
            if resumed and await self._batch_cancelled(store_id, file_id):  # asked before the daemon stopped
                await self._end_cancelled(store_id, file_id)
                return
            try:
                usage, count = await self._build(store_id, file_id, key)
            except asyncio.CancelledError:
                raise
            except (parsing.ParseError, RetrievalError, EmbeddingFailed, VectorsError) as exc:
                await self._failed(store_id, file_id, _error_code(exc), str(exc))
                return
            except Exception as exc:
                log.exception("vector store %s: indexing file %s failed", store_id, file_id)
                await self._failed(store_id, file_id, "server_error", f"indexing failed: {type(exc).__name__}")
                return
            done = await asyncio.to_thread(self.store.attach_transition, store_id, file_id, "in_progress",
                                           {"status": "completed", "usage_bytes": usage, "chunks": count})
            if not done:  # cancelled or detached meanwhile: nothing of it stays
                db = await self.backend()
                await asyncio.to_thread(db.delete_file, store_id, file_id)

    async def _batch_cancelled(self, store_id: str, file_id: str) -> bool:
        att = await asyncio.to_thread(self.store.attach_get, store_id, file_id)
        if att is None or not att["batch_id"]:
            return False
        batch = await asyncio.to_thread(self.store.batch_get, att["batch_id"])
        return batch is not None and batch["cancelled"] is not None

    async def _end_cancelled(self, store_id: str, file_id: str) -> None:
        """Mark a file still in progress `cancelled` and drop whatever chunks it has."""
        if await asyncio.to_thread(self.store.attach_transition, store_id, file_id, "in_progress",
                                   {"status": "cancelled", "usage_bytes": 0, "chunks": 0}):
            db = await self.backend()
            await asyncio.to_thread(db.delete_file, store_id, file_id)
            log.info("vector store %s: file %s cancelled", store_id, file_id)

    async def cancel_batch(self, row: dict[str, Any], batch: dict[str, Any]) -> None:
        """Record the cancel and stop the batch's files still in progress, in the background (the batch
        reads `cancelling` until none is left, then `cancelled`)."""
        files = await self.attachments(row["id"], batch_id=batch["id"])
        if batch["cancelled"] is None and not any(a["status"] == "in_progress" for a in files):
            raise RetrievalError(409, f"file batch {batch['id']} has finished; only a batch in progress can be "
                                      "cancelled", param="batch_id", code="batch_not_in_progress")
        await asyncio.to_thread(self.store.batch_cancel, batch["id"], self.clock())
        task = asyncio.ensure_future(self._cancel_files(row["id"], batch["id"]))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel_files(self, store_id: str, batch_id: str) -> None:
        for a in await self.attachments(store_id, batch_id=batch_id, status="in_progress"):
            await self._cancel_indexing(store_id, a["file_id"])  # its own cleanup drops what it wrote
            await self._end_cancelled(store_id, a["file_id"])

    async def _build(self, store_id: str, file_id: str, key: ApiKey | None) -> tuple[int, int]:
        store_row = await asyncio.to_thread(self.store.vstore_get, store_id)
        att = await asyncio.to_thread(self.store.attach_get, store_id, file_id)
        frow = await asyncio.to_thread(self.store.file_get, file_id)
        if store_row is None or att is None or frow is None:
            raise RetrievalError(404, "the store or file was deleted while it was indexed")
        data = await asyncio.to_thread((self.files_dir / file_id).read_bytes)
        text = await asyncio.to_thread(parsing.extract, frow["filename"], data)
        static = json.loads(att["chunking"])["static"]
        strategy = chunking.Strategy(False, static["max_chunk_size_tokens"], static["chunk_overlap_tokens"])
        pieces = await asyncio.to_thread(chunking.chunk, text, strategy, (await self.tokenizer()).spans)
        db = await self.backend()
        await asyncio.to_thread(db.delete_file, store_id, file_id)  # a re-run after a restart starts clean
        step = self.config.vectors.embed_batch
        model = store_row["embedding_model"]
        dimension = store_row["dimension"]
        written = 0
        try:
            for i in range(0, len(pieces), step):
                part = pieces[i:i + step]
                vectors = await self.embedder.embed(model, part, key)
                dim = len(vectors[0])
                if dimension is None:
                    dimension = dim
                    await asyncio.to_thread(self.store.vstore_update, store_id, {"dimension": dim})
                elif dim != dimension:
                    raise RetrievalError(409, f"model {model!r} returned {dim} dimensions; vector store {store_id} "
                                              f"holds {dimension}", code="embedding_dimension_mismatch")
                chunks = [Chunk(f"{file_id}:{i + j}", file_id, t, v)
                          for j, (t, v) in enumerate(zip(part, vectors, strict=True))]
                await asyncio.to_thread(db.add, store_id, dim, chunks)
                written += len(chunks)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(db.delete_file, store_id, file_id))
            raise
        return sum(len(p.encode()) for p in pieces), written

    async def _failed(self, store_id: str, file_id: str, code: str, message: str) -> None:
        log.warning("vector store %s: file %s failed: %s", store_id, file_id, message)
        await asyncio.to_thread(self.store.attach_transition, store_id, file_id, "in_progress", {
            "status": "failed", "last_error": json.dumps({"code": code, "message": message}),
            "usage_bytes": 0, "chunks": 0})

    # -- search
    def _same_model(self, row: dict[str, Any]) -> None:
        model = embedding_model(self.config)
        if row["embedding_model"] != model:
            raise RetrievalError(409, f"vector store {row['id']} was built with embedding model "
                                      f"{row['embedding_model']!r} but the configured model is {model!r}; "
                                      f"rebuild it: appliance vectors reindex {row['id']} --model {model}",
                                 param="vector_store_id", code="embedding_model_mismatch")

    async def file_content(self, row: dict[str, Any], file_id: str) -> list[str]:
        """The chunks of an attached file as stored, in order (none for a failed or cancelled one)."""
        att = await asyncio.to_thread(self.store.attach_get, row["id"], file_id)
        if att is None:
            raise RetrievalError(404, f"file {file_id!r} is not attached to vector store {row['id']}",
                                 param="file_id", code="file_not_found")
        if att["status"] == "in_progress":
            raise RetrievalError(409, f"file {file_id} is still being indexed in vector store {row['id']}; poll "
                                      "it until its status is completed", param="file_id",
                                 code="vector_store_file_not_ready")
        if att["status"] != "completed" or not att["chunks"]:
            return []
        db = await self.backend()
        return await asyncio.to_thread(db.texts, row["id"], [f"{file_id}:{i}" for i in range(int(att["chunks"]))])

    async def search(self, key: ApiKey | None, row: dict[str, Any], queries: list[str], k: int,
                     flt: dict[str, Any] | None, threshold: float) -> list[SearchHit]:
        self._live(row)
        self._same_model(row)
        attached = await self.attachments(row["id"])
        busy = [a["file_id"] for a in attached if a["status"] == "in_progress"]
        if busy:
            raise RetrievalError(409, f"vector store {row['id']} is still indexing {len(busy)} file(s) "
                                      f"({', '.join(busy[:3])}); poll it until its status is completed",
                                 param="vector_store_id", code="vector_store_not_ready")
        done = [a for a in attached if a["status"] == "completed"
                and (flt is None or filters.matches(flt, json.loads(a["attributes"])))]
        await self._touch(row)
        if not done:
            return []
        vectors = await self.embedder.embed(row["embedding_model"], queries, key)
        db = await self.backend()
        # Only completed files have chunks (a failed or detached file leaves none, and an in-progress one
        # blocks the search above): without a filter the whole collection is searched, unrestricted.
        ids = None if flt is None else [a["file_id"] for a in done]
        best: dict[str, Hit] = {}
        for v in vectors:
            for hit in await asyncio.to_thread(db.search, row["id"], v, k, ids):
                if hit.id not in best or hit.score > best[hit.id].score:
                    best[hit.id] = hit
        ranked = sorted(best.values(), key=lambda h: -h.score)
        meta = {a["file_id"]: json.loads(a["attributes"]) for a in done}
        names = {}
        for fid in {h.file_id for h in ranked}:
            f = await asyncio.to_thread(self.store.file_get, fid)
            names[fid] = f["filename"] if f else ""
        return [SearchHit(h.file_id, names[h.file_id], round(h.score, 6), meta.get(h.file_id, {}), h.text)
                for h in ranked if h.score >= threshold][:k]


def _owner(key: ApiKey | None) -> str:
    return key.id if key is not None else "-"


def _visible(row: dict[str, Any], key: ApiKey | None) -> bool:
    return bool(row["key_id"] == _owner(key) or (key is not None and key.admin))


def _error_code(exc: Exception) -> str:
    if isinstance(exc, parsing.ParseError):
        return exc.code
    return "server_error"
