"""Named, ordered schema migrations shared by every store backend, and the check made at start.

Each migration is applied once, in order, inside one transaction together with its row in
`schema_migrations`; a store that records a migration this code does not know (written by a newer
appliance) is refused before anything is written. The SQL is written once for both backends; the
few types that differ are the `{...}` placeholders filled by `render`.
It must not open connections: a backend hands `apply` a transaction (`Tx`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY", "float": "REAL"},  # rowid: no sqlite_sequence write per insert
    "postgresql": {"serial": "BIGSERIAL PRIMARY KEY", "float": "DOUBLE PRECISION"},
}


class Tx(Protocol):
    """One open transaction; SQL uses `?` placeholders on every backend."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Migration:
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_keys", (
        "CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, admin INTEGER NOT NULL, hash TEXT NOT NULL, "
        "created {float} NOT NULL, revoked {float})",
    )),
    Migration("0002_usage", (
        "CREATE TABLE usage (id {serial}, at {float} NOT NULL, day TEXT NOT NULL, route TEXT NOT NULL, "
        "model TEXT NOT NULL, key_id TEXT, status INTEGER NOT NULL, tokens_in INTEGER, tokens_out INTEGER, "
        "tokens_exact INTEGER NOT NULL, images INTEGER NOT NULL, audio_s {float} NOT NULL, gpu_s {float} NOT NULL, "
        "wait_s {float} NOT NULL, wall_s {float} NOT NULL, error TEXT)",
        "CREATE INDEX usage_at ON usage (at)",
        "CREATE INDEX usage_day_model ON usage (day, model)",
    )),
    Migration("0003_state", (
        "CREATE TABLE state (name TEXT PRIMARY KEY, data TEXT NOT NULL, updated {float} NOT NULL)",
    )),
    Migration("0004_jobs", (
        "CREATE TABLE jobs (seq {serial}, id TEXT NOT NULL UNIQUE, route TEXT NOT NULL, model TEXT NOT NULL, "
        "key_id TEXT NOT NULL, idempotency_key TEXT, body_hash TEXT NOT NULL, body TEXT NOT NULL, "
        "base_url TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, error TEXT, result TEXT, "
        "owner TEXT, created {float} NOT NULL, started {float}, finished {float})",
        "CREATE UNIQUE INDEX jobs_idempotency ON jobs (key_id, idempotency_key)",
        "CREATE INDEX jobs_queue ON jobs (state, model, seq)",
    )),
    Migration("0005_usage_daily", (
        "CREATE TABLE usage_daily (day TEXT NOT NULL, model TEXT NOT NULL, key_id TEXT NOT NULL, "
        "requests INTEGER NOT NULL, errors INTEGER NOT NULL, tokens_in INTEGER NOT NULL, "
        "tokens_out INTEGER NOT NULL, images INTEGER NOT NULL, audio_s {float} NOT NULL, gpu_s {float} NOT NULL, "
        "PRIMARY KEY (day, model, key_id))",
    )),
    Migration("0006_files", (
        "CREATE TABLE files (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, filename TEXT NOT NULL, "
        "purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created {float} NOT NULL)",
    )),
    Migration("0007_vector_stores", (
        "CREATE TABLE vector_stores (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, name TEXT, metadata TEXT NOT NULL, "
        "embedding_model TEXT NOT NULL, dimension INTEGER, created {float} NOT NULL, last_active {float} NOT NULL)",
        "CREATE TABLE vector_store_files (vector_store_id TEXT NOT NULL, file_id TEXT NOT NULL, "
        "batch_id TEXT, status TEXT NOT NULL, last_error TEXT, attributes TEXT NOT NULL, chunking TEXT NOT NULL, "
        "usage_bytes INTEGER NOT NULL, chunks INTEGER NOT NULL, created {float} NOT NULL, "
        "PRIMARY KEY (vector_store_id, file_id))",
        "CREATE INDEX vector_store_files_file ON vector_store_files (file_id)",
        "CREATE TABLE vector_store_batches (id TEXT PRIMARY KEY, vector_store_id TEXT NOT NULL, "
        "created {float} NOT NULL)",
    )),
    Migration("0008_boxes", (
        "CREATE TABLE boxes (box_id TEXT PRIMARY KEY, url TEXT NOT NULL, version TEXT NOT NULL, "
        "api_version INTEGER NOT NULL, state TEXT NOT NULL, residency TEXT NOT NULL, "
        "heartbeat_at {float} NOT NULL, joined_at {float} NOT NULL)",
        "CREATE INDEX jobs_owner ON jobs (state, owner)",
    )),
    Migration("0009_request_windows", (
        "CREATE TABLE request_windows (key_id TEXT NOT NULL, window_start BIGINT NOT NULL, "
        "requests INTEGER NOT NULL, PRIMARY KEY (key_id, window_start))",
    )),
    Migration("0010_vector_store_lifecycle", (
        "ALTER TABLE vector_stores ADD COLUMN expires_after TEXT",  # {"anchor": "last_active_at", "days": N}
        "ALTER TABLE vector_stores ADD COLUMN description TEXT",
        "ALTER TABLE vector_store_batches ADD COLUMN cancelled {float}",  # when a cancel was asked
    )),
)


class SchemaTooNew(Exception):
    """The store was written by a newer appliance: its migrations are unknown here."""


def render(sql: str, dialect: Dialect) -> str:
    return sql.format(**_TYPES[dialect])


def ensure_table(tx: Tx, dialect: Dialect) -> None:
    tx.execute(render("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, "
                      "applied {float} NOT NULL)", dialect))


def pending(applied: Sequence[str], migrations: Sequence[Migration], where: str) -> list[Migration]:
    """The migrations still to apply, in order; raise SchemaTooNew when `applied` holds unknown ones."""
    known = [m.name for m in migrations]
    unknown = sorted(set(applied) - set(known))
    if unknown:
        raise SchemaTooNew(f"{where}: schema migration(s) {', '.join(unknown)} are newer than this appliance "
                           f"knows (latest known: {known[-1]}); refusing to start, nothing was written")
    done = set(applied)
    return [m for m in migrations if m.name not in done]


def apply(tx: Tx, migration: Migration, dialect: Dialect) -> None:
    for statement in migration.statements:
        tx.execute(render(statement, dialect))
    tx.execute("INSERT INTO schema_migrations (name, applied) VALUES (?, ?)", (migration.name, time.time()))
