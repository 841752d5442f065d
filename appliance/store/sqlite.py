"""The embedded store: one SQLite file (through sqlite-utils) in WAL mode, written by one thread.

Every write runs on the single writer thread, so writes are serialized without locks in the callers;
`state_put_nowait` queues its write there and returns. The writer commits in groups: it takes every
write waiting when it wakes, runs each in its own SAVEPOINT inside one explicit transaction
(BEGIN IMMEDIATE ... COMMIT; a write that raises is rolled back alone), and answers the callers only
after the COMMIT, so a caller that got its answer has a durable write and concurrent writers share
one commit. Reads use their own connection (WAL lets them run beside the writer). `synchronous=NORMAL`
in WAL mode: a committed transaction survives kill -9 of the process (the OS holds the WAL pages);
only a power loss may drop the last commits. `backup` copies a consistent snapshot while the daemon
writes (SQLite's online backup API).
It must not hold SQL of its own beyond connection set-up: the shared SQL lives in `sqlcore`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .migrations import Tx
from .protocol import StoreError
from .sqlcore import SqlStore


def _import_sqlite_utils() -> Any:
    """sqlite-utils imports pandas and numpy whenever they are installed (the vectors and full extras bring
    them), only for conversions the store never asks for: about 55 MB of the daemon's idle memory. Hidden
    for that one import, they stay importable for whatever needs them later (pymilvus needs pandas)."""
    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        import sqlite_utils
    finally:
        for name in hidden:
            del sys.modules[name]
    return sqlite_utils


if TYPE_CHECKING:
    import sqlite_utils
else:
    sqlite_utils = _import_sqlite_utils()

log = logging.getLogger("appliance.store")
T = TypeVar("T")
GROUP_MAX = 256  # writes committed together at most
_STOP = object()


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
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._read_lock = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def _applied(self, tx: Tx) -> list[str]:
        if not tx.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"):
            return []
        return [r["name"] for r in tx.query("SELECT name FROM schema_migrations ORDER BY name")]

    def _write_loop(self) -> None:
        conn = self._writer_db.conn
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            group = [first]
            while len(group) < GROUP_MAX:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)  # after this group
                    break
                group.append(item)
            outcomes: list[tuple[Future[Any], bool, Any]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, fut in group:
                    conn.execute("SAVEPOINT w")
                    try:
                        value = fn(_SqliteTx(conn))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                        outcomes.append((fut, False, exc))
                    else:
                        conn.execute("RELEASE w")
                        outcomes.append((fut, True, value))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:  # the transaction itself failed: nothing of the group is written
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                outcomes = [(fut, False, StoreError(f"store {self.describe()}: {exc}")) for _, fut in group]
            for fut, ok, value in outcomes:  # answered only now: what a caller sees as written is committed
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _submit(self, fn: Callable[[Tx], T]) -> Future[T]:
        fut: Future[T] = Future()
        self._queue.put((fn, fut))
        return fut

    def _write(self, fn: Callable[[Tx], T]) -> T:
        if self._closed:
            raise StoreError(f"store {self.describe()} is closed")
        return self._submit(fn).result()

    async def _awrite(self, fn: Callable[[Tx], T]) -> T:
        if self._closed:
            raise StoreError(f"store {self.describe()} is closed")
        return await asyncio.wrap_future(self._submit(fn))  # straight to the writer: no thread in between

    def _write_nowait(self, fn: Callable[[Tx], object]) -> None:
        if self._closed:
            return
        self._submit(fn).add_done_callback(self._report)

    @staticmethod
    def _report(fut: Future[object]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.warning("store: a queued write failed: %s", exc)

    def _read(self, fn: Callable[[Tx], T]) -> T:
        if self._closed:
            raise StoreError(f"store {self.describe()} is closed")
        with self._read_lock:
            try:
                return fn(_SqliteTx(self._reader_db.conn))
            except sqlite3.OperationalError as exc:  # locked past busy_timeout, disk gone: one line
                raise StoreError(f"store {self.describe()}: {exc}") from None

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
        self._queue.put(_STOP)
        self._writer.join()  # queued writes first
        self._writer_db.conn.close()
        self._reader_db.conn.close()
