"""The embedded store: one SQLite file (through sqlite-utils) in WAL mode, written by one thread.

Every write runs as an explicit transaction (BEGIN IMMEDIATE ... COMMIT) on the single writer thread,
so writes are serialized without locks in the callers; `state_put_nowait` queues its write there and
returns. Reads use their own connection (WAL lets them run beside the writer). `synchronous=NORMAL`
in WAL mode: a committed transaction survives kill -9 of the process (the OS holds the WAL pages);
only a power loss may drop the last commits. `backup` copies a consistent snapshot while the daemon
writes (SQLite's online backup API).
It must not hold SQL of its own beyond connection set-up: the shared SQL lives in `sqlcore`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from .migrations import Tx
from .protocol import StoreError
from .sqlcore import SqlStore

log = logging.getLogger("appliance.store")
T = TypeVar("T")


class _SqliteTx:
    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _connect(path: Path) -> sqlite_utils.Database:
    conn = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


class SqliteStore(SqlStore):
    backend = "sqlite"
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists()
            self._writer_db = _connect(path)
            self._reader_db = _connect(path)
            if fresh:
                path.chmod(0o600)  # it holds the API keys' hashes
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"store sqlite:///{path}: cannot open: {exc}") from None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._read_lock = threading.Lock()
        self._closed = False

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def _applied(self, tx: Tx) -> list[str]:
        if not tx.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"):
            return []
        return [r["name"] for r in tx.query("SELECT name FROM schema_migrations ORDER BY name")]

    def _in_tx(self, fn: Callable[[Tx], T]) -> T:
        conn = self._writer_db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(_SqliteTx(conn))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    def _write(self, fn: Callable[[Tx], T]) -> T:
        if self._closed:
            raise StoreError(f"store {self.describe()} is closed")
        return self._writer.submit(self._in_tx, fn).result()

    def _write_nowait(self, fn: Callable[[Tx], object]) -> None:
        if self._closed:
            return
        self._writer.submit(self._in_tx, fn).add_done_callback(self._report)

    @staticmethod
    def _report(fut: Future[object]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.warning("store: a queued write failed: %s", exc)

    def _read(self, fn: Callable[[Tx], T]) -> T:
        with self._read_lock:
            return fn(_SqliteTx(self._reader_db.conn))

    def backup(self, dest: Path) -> None:
        """A consistent copy of the whole store at `dest` (written beside it, then renamed)."""
        dest = dest.expanduser()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        tmp.unlink(missing_ok=True)
        target = sqlite3.connect(tmp)
        try:
            with self._read_lock:
                self._reader_db.conn.backup(target)
        finally:
            target.close()
        tmp.chmod(0o600)
        os.replace(tmp, dest)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)  # queued writes first
        self._writer_db.conn.close()
        self._reader_db.conn.close()
