"""What the appliance keeps, as one protocol (`Store`) that every backend implements.

Owns the record shapes that cross the protocol (`KeyRow`, `Job`, `JobState`, `BoxRecord`) and the errors
(`StoreError`: a backend that cannot be reached or used). Methods are synchronous and thread-safe; the
daemon calls the slow ones off the event loop (`asyncio.to_thread`), the CLI calls them directly.
It must not know SQL, files or connections: those belong to the backends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from ..usage import UsageRecord


class StoreError(Exception):
    """The store cannot be opened or used; the message is one line naming the store."""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class KeyRow:
    id: str
    name: str
    admin: bool
    hash: str
    created: float
    revoked: float | None


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    route: str
    model: str
    key_id: str  # "-" when the API runs open
    idempotency_key: str | None
    body_hash: str
    body: str  # the synchronous route's JSON body
    base_url: str  # scheme://host the client used (image URLs are signed under it)
    state: JobState
    attempts: int
    error: str | None
    result: str | None  # JSON: {"status": int, "content_type": str, "body": ... or "file": name}
    owner: str | None  # the box running it
    created: float
    started: float | None
    finished: float | None


@dataclass(frozen=True)
class NewJob:
    id: str
    route: str
    model: str
    key_id: str
    idempotency_key: str | None
    body_hash: str
    body: str
    base_url: str


@dataclass(frozen=True)
class BoxRecord:
    """One box of a fleet as the registry holds it (docs/fleet.md)."""

    box_id: str
    url: str  # where the router reaches the box
    version: str  # the appliance's version
    api_version: int  # appliance.fleet.API_VERSION of the box
    state: str  # "starting" | "ready" | "draining" | "leaving" (the box's readiness)
    residency: dict[str, Any]  # appliance.fleet.summary.residency_summary()
    heartbeat_at: float = 0.0  # epoch s by the database's clock (set by put_box)
    joined_at: float = 0.0  # epoch s by the database's clock, of the first put_box


class Store(Protocol):
    backend: str  # "sqlite" or "postgresql"

    def describe(self) -> str:
        """The store's address for logs and /api/status (never a password)."""
        ...

    def close(self) -> None: ...

    def migrations(self) -> list[str]:
        """Names of the applied migrations, in order."""
        ...

    # -- API keys
    def key_insert(self, row: KeyRow) -> None: ...

    def key_rows(self) -> list[KeyRow]: ...

    def key_revoke(self, id_or_name: str, at: float) -> int: ...

    def keys_fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever a key is added or revoked (cheap: the gateway asks once a second)."""
        ...

    # -- usage
    def usage_insert(self, records: Sequence[UsageRecord]) -> None: ...

    def usage_recent(self, *, since: float | None, until: float | None, key_id: str | None,
                     model: str | None, limit: int) -> list[dict[str, Any]]: ...

    def usage_days(self, *, since: float | None, until: float | None, key_id: str | None,
                   model: str | None) -> list[dict[str, Any]]:
        """Per (day, model, key) totals: from raw records, and from rollups for days whose records are gone."""
        ...

    def usage_rollup(self, before_day: str) -> int:
        """Fold the raw records of every day before `before_day` (YYYY-MM-DD) into the daily table."""
        ...

    def usage_prune(self, before: float) -> int:
        """Delete raw records older than `before` whose day is rolled up."""
        ...

    # -- runtime state documents (measured footprints, transition times, settings)
    def state_get(self, name: str) -> dict[str, Any] | None: ...

    def state_put(self, name: str, data: dict[str, Any]) -> None: ...

    def state_put_nowait(self, name: str, data: dict[str, Any]) -> None:
        """Queue the write and return at once (called on the event loop)."""
        ...

    # -- jobs
    def job_create(self, job: NewJob) -> tuple[Job, bool]:
        """(job, created): an existing job with the same (key_id, idempotency_key) is returned as is."""
        ...

    async def ajob_create(self, job: NewJob) -> tuple[Job, bool]:
        """`job_create` for the event loop."""
        ...

    def job_get(self, job_id: str) -> Job | None: ...

    def job_position(self, job: Job) -> int:
        """Jobs queued ahead of `job` for its model (0: next)."""
        ...

    def job_claim(self, owner: str, *, models: Iterable[str] = (), job_id: str | None = None) -> Job | None:
        """Atomically move the oldest queued job (of `models`, or exactly `job_id`) to running for `owner`."""
        ...

    async def ajob_claim(self, owner: str, *, models: Iterable[str] = (), job_id: str | None = None) -> Job | None:
        """`job_claim` for the event loop."""
        ...

    def job_finish(self, job: Job, result: str) -> bool:
        """Store the result of the attempt `job` describes; False if the job moved on meanwhile."""
        ...

    def job_fail(self, job: Job, error: str, retry: bool) -> bool:
        """Record a failed attempt: back to queued when `retry`, else failed for good."""
        ...

    def job_cancel(self, job_id: str) -> Job | None:
        """Cancel a job that is not finished; returns the job as it is now (None: unknown id)."""
        ...

    def jobs_requeue(self, owner: str) -> list[Job]:
        """At start: `owner`'s running jobs (its previous life died with them) back to queued."""
        ...

    def jobs_queued(self, models: Iterable[str]) -> list[Job]: ...

    def jobs_prune(self, before: float) -> int:
        """Delete finished jobs older than `before`."""
        ...

    def jobs_requeue_orphans(self, expire_s: float, max_attempts: int) -> list[Job]:
        """Running jobs whose owner's registry row is older than `expire_s` (by the database's clock): back
        to queued (failed for good once `max_attempts` runs were made), atomically: of several boxes
        calling this at once, exactly one gets each job. A box with no row (not a fleet box, or one that
        left) is not a dead box: its jobs are its own (`jobs_requeue` at its start, or at its stop)."""
        ...

    # -- fleet-wide rate limits (fixed windows every box sharing the store counts into)
    def count_request(self, key_id: str, window_start: int) -> int:
        """Count one request of `key_id` in the window beginning at `window_start` (epoch seconds);
        the window's count so far, this request included. A key's older windows are dropped."""
        ...

    # -- fleet registry (heartbeat ages by the database's clock, so boxes' clocks need not agree)
    def put_box(self, box: BoxRecord) -> None:
        """Insert or update the box's row; heartbeat_at is now, joined_at is kept from the first put."""
        ...

    def boxes(self, live_within_s: float | None = None) -> list[BoxRecord]:
        """Every box (ordered by id), or only those whose last heartbeat is younger than `live_within_s`."""
        ...

    def remove_box(self, box_id: str) -> bool: ...

    def boxes_forget(self, older_than_s: float) -> list[str]:
        """Delete the rows whose last heartbeat is older than `older_than_s` (by the database's clock) and
        under which no job is still running (a dead box's running jobs are found through its row); the
        ids deleted, sorted."""
        ...

    # -- retrieval (rows are dicts of the columns in store.retrieval; JSON columns stay text)
    def file_insert(self, row: dict[str, Any]) -> None: ...

    def file_get(self, file_id: str) -> dict[str, Any] | None: ...

    def file_list(self, purpose: str | None = None) -> list[dict[str, Any]]: ...

    def file_delete(self, file_id: str) -> bool:
        """Delete the file's row and its attachments to vector stores."""
        ...

    def vstore_insert(self, row: dict[str, Any]) -> None: ...

    def vstore_get(self, store_id: str) -> dict[str, Any] | None: ...

    def vstore_list(self) -> list[dict[str, Any]]: ...

    def vstore_update(self, store_id: str, fields: dict[str, Any]) -> None: ...

    def vstore_delete(self, store_id: str) -> bool: ...

    def attach_insert(self, rows: list[dict[str, Any]], batch: dict[str, Any] | None = None) -> None: ...

    def attach_get(self, store_id: str, file_id: str) -> dict[str, Any] | None: ...

    def attach_list(self, store_id: str | None = None, *, batch_id: str | None = None,
                    file_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]: ...

    def attach_update(self, store_id: str, file_id: str, fields: dict[str, Any]) -> bool: ...

    def attach_transition(self, store_id: str, file_id: str, from_status: str, fields: dict[str, Any]) -> bool:
        """Update the attachment only while its status is `from_status`; whether it did."""
        ...

    def attach_delete(self, store_id: str, file_id: str) -> bool: ...

    def batch_get(self, batch_id: str) -> dict[str, Any] | None: ...

    def batch_cancel(self, batch_id: str, at: float) -> bool:
        """Record the time a batch's cancel was asked (the first ask only)."""
        ...

    # -- copy and backup
    def dump(self) -> Iterator[tuple[str, list[str], list[tuple[Any, ...]]]]:
        """(table, columns, rows) for every table the migrations made, but the fleet registry (live heartbeats)."""
        ...

    def load(self, table: str, columns: list[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows copied from another store (the table must be empty)."""
        ...
