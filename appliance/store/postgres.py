"""The external store: PostgreSQL through psycopg 3 with a connection pool (the full profile).

Several boxes may share one database: migrations take an advisory lock, the job queue's claim
locks its row with FOR UPDATE SKIP LOCKED, and each write is one explicit transaction on a pooled
connection. Imported only when `store.url` is a postgresql:// URL (psycopg stays out of the
default daemon).
It must not hold SQL of its own beyond connection set-up: the shared SQL lives in `sqlcore`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from .migrations import Tx
from .protocol import StoreError
from .sqlcore import SqlStore

log = logging.getLogger("appliance.store")
T = TypeVar("T")
MIGRATION_LOCK = 0x61707031  # pg_advisory_xact_lock key: one box migrates at a time


def redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class _PgTx:
    __slots__ = ("cur",)

    def __init__(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.cur.execute(sql.replace("?", "%s"), params)
        return self.cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cur.executemany(sql.replace("?", "%s"), rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.cur.execute(sql.replace("?", "%s"), params)
        return self.cur.fetchall() if self.cur.description else []


class PostgresStore(SqlStore):
    backend = "postgresql"
    dialect = "postgresql"
    skip_locked = "FOR UPDATE SKIP LOCKED"
    now_sql = "(extract(epoch from now())::double precision)"  # the transaction's start: one value per write

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        try:  # one direct attempt first: a refused connection is reported at once, not after the pool's retries
            psycopg.connect(url, connect_timeout=max(1, int(connect_timeout_s))).close()
        except psycopg.Error as exc:
            raise StoreError(f"store {redact(url)}: does not answer ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split()) or 'no answer'})") from None
        # A request path that reads the store (the key cache) waits at most 2 s for a connection.
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=2.0,
                                    kwargs={"connect_timeout": max(1, int(connect_timeout_s))})
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except (PoolTimeout, psycopg.Error) as exc:
            self._pool.close()
            raise StoreError(f"store {redact(url)}: does not answer ({type(exc).__name__}: "
                             f"{str(exc).strip() or 'no connection within the timeout'})") from None
        self._async = ThreadPoolExecutor(1, thread_name_prefix="store-pg-nowait")
        self._closed = threading.Event()

    def describe(self) -> str:
        return redact(self.url)

    def _applied(self, tx: Tx) -> list[str]:
        if not tx.query("SELECT to_regclass('schema_migrations') AS t")[0]["t"]:
            return []
        return [r["name"] for r in tx.query("SELECT name FROM schema_migrations ORDER BY name")]

    def _run(self, fn: Callable[[Tx], T], lock: bool = False) -> T:
        if self._closed.is_set():
            raise StoreError(f"store {self.describe()} is closed")
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                if lock:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                return fn(_PgTx(cur))
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreError(f"store {self.describe()}: {type(exc).__name__}: {exc}") from None

    def _write(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn)

    def _migrate_tx(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn, lock=True)  # boxes starting together migrate one after the other

    def _write_nowait(self, fn: Callable[[Tx], object]) -> None:
        if self._closed.is_set():
            return

        def run() -> None:
            try:
                self._run(fn)
            except (StoreError, psycopg.Error) as exc:
                log.warning("store: a queued write failed: %s", exc)
        self._async.submit(run)

    def _read(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn)

    def _after_load(self, table: str, columns: list[str]) -> None:
        serial = {"usage": "id", "jobs": "seq"}.get(table)
        if serial and serial in columns:
            self._run(lambda tx: tx.query(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{serial}'), "
                f"(SELECT coalesce(max({serial}), 1) FROM {table}))"))

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._async.shutdown(wait=True)
        self._closed.set()
        self._pool.close()
