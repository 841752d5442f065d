"""The SQL both backends share: every `Store` method written once over a transaction (`Tx`).

A backend subclasses `SqlStore` and supplies how a transaction is run (`_write`, `_write_nowait`,
`_read`), its dialect, its clock (`now_sql`: the fleet registry's heartbeat ages are measured by the
database, never by a box) and how a queue claim locks a row. Writes are explicit transactions; the
queue claim is one atomic UPDATE ... RETURNING, so two claimers never get the same job.
It must not open connections or threads itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from ..usage import UsageRecord
from . import migrations
from .migrations import MIGRATIONS, Dialect, Migration, Tx
from .protocol import BoxRecord, Job, JobState, KeyRow, NewJob
from .retrieval import RetrievalSql

T = TypeVar("T")

_USAGE_COLS = ("at", "day", "route", "model", "key_id", "status", "tokens_in", "tokens_out", "tokens_exact",
               "images", "audio_s", "gpu_s", "wait_s", "wall_s", "error")
_JOB_COLS = ("id, seq, route, model, key_id, idempotency_key, body_hash, body, base_url, state, attempts, error, "
             "result, owner, created, started, finished")
_SUMS = ("count(*) AS requests, sum(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS errors, "
         "coalesce(sum(tokens_in), 0) AS tokens_in, coalesce(sum(tokens_out), 0) AS tokens_out, "
         "coalesce(sum(images), 0) AS images, coalesce(sum(audio_s), 0) AS audio_s, "
         "coalesce(sum(gpu_s), 0) AS gpu_s")
# What dump/load copy: not `boxes`, the fleet registry's heartbeats, nor `request_windows`, the
# rate limits' current counts: live state, not data.
TABLES = ("keys", "usage", "usage_daily", "state", "jobs", "files", "vector_stores", "vector_store_files",
          "vector_store_batches")


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _job(r: dict[str, Any]) -> Job:
    return Job(id=r["id"], seq=int(r["seq"]), route=r["route"], model=r["model"], key_id=r["key_id"],
               idempotency_key=r["idempotency_key"], body_hash=r["body_hash"], body=r["body"],
               base_url=r["base_url"], state=JobState(r["state"]), attempts=int(r["attempts"]), error=r["error"],
               result=r["result"], owner=r["owner"], created=r["created"], started=r["started"],
               finished=r["finished"])


_BOX_COLS = "box_id, url, version, api_version, state, residency, heartbeat_at, joined_at"


def _box(r: dict[str, Any]) -> BoxRecord:
    residency = json.loads(r["residency"])
    return BoxRecord(box_id=r["box_id"], url=r["url"], version=r["version"], api_version=int(r["api_version"]),
                     state=r["state"], residency=residency if isinstance(residency, dict) else {},
                     heartbeat_at=float(r["heartbeat_at"]), joined_at=float(r["joined_at"]))


def _filters(since: float | None, until: float | None, key_id: str | None,
             model: str | None) -> tuple[str, list[Any]]:
    where, params = ["1=1"], []
    for clause, value in (("at >= ?", since), ("at < ?", until), ("key_id = ?", key_id), ("model = ?", model)):
        if value is not None:
            where.append(clause)
            params.append(value)
    return " AND ".join(where), params


class SqlStore(RetrievalSql):
    backend: str = ""
    dialect: Dialect = "sqlite"
    skip_locked = ""  # PostgreSQL: "FOR UPDATE SKIP LOCKED" in the claim's subquery
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"  # the database's clock, epoch seconds

    # -- supplied by the backend
    def _write(self, fn: Callable[[Tx], T]) -> T:
        raise NotImplementedError

    def _write_nowait(self, fn: Callable[[Tx], object]) -> None:
        raise NotImplementedError

    def _read(self, fn: Callable[[Tx], T]) -> T:
        raise NotImplementedError

    def _applied(self, tx: Tx) -> list[str]:
        raise NotImplementedError

    async def _awrite(self, fn: Callable[[Tx], T]) -> T:
        """`_write` for the event loop (default: in a worker thread; SQLite hands it to its writer)."""
        return await asyncio.to_thread(self._write, fn)

    def _migrate_tx(self, fn: Callable[[Tx], T]) -> T:
        """Run one migration's transaction (PostgreSQL adds a lock shared by every box)."""
        return self._write(fn)

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- schema
    def migrate(self, available: Sequence[Migration] = MIGRATIONS) -> list[str]:
        """Apply what is pending (each migration in its own transaction); returns the names applied.
        Raises migrations.SchemaTooNew, before writing anything, for a store from a newer appliance."""
        todo = migrations.pending(self._read(self._applied), available, self.describe())
        done: list[str] = []
        for m in todo:
            def step(tx: Tx, m: Migration = m) -> bool:
                migrations.ensure_table(tx, self.dialect)
                if m.name in self._applied(tx):  # another process got there first
                    return False
                migrations.apply(tx, m, self.dialect)
                return True

            if self._migrate_tx(step):
                done.append(m.name)
        return done

    def migrations(self) -> list[str]:
        return self._read(self._applied)

    # -- keys
    def key_insert(self, row: KeyRow) -> None:
        self._write(lambda tx: tx.execute(
            "INSERT INTO keys (id, name, admin, hash, created, revoked) VALUES (?, ?, ?, ?, ?, ?)",
            (row.id, row.name, int(row.admin), row.hash, row.created, row.revoked)))

    def key_rows(self) -> list[KeyRow]:
        rows = self._read(lambda tx: tx.query(
            "SELECT id, name, admin, hash, created, revoked FROM keys ORDER BY created, id"))
        return [KeyRow(r["id"], r["name"], bool(r["admin"]), r["hash"], r["created"], r["revoked"]) for r in rows]

    def key_revoke(self, id_or_name: str, at: float) -> int:
        return self._write(lambda tx: tx.execute(
            "UPDATE keys SET revoked = ? WHERE (id = ? OR name = ?) AND revoked IS NULL", (at, id_or_name, id_or_name)))

    def keys_fingerprint(self) -> tuple[Any, ...]:
        rows = self._read(lambda tx: tx.query(
            "SELECT count(*) AS n, count(revoked) AS r, coalesce(max(created), 0) AS c, "
            "coalesce(max(revoked), 0) AS v FROM keys"))
        r = rows[0]
        return (r["n"], r["r"], r["c"], r["v"])

    # -- usage
    def usage_insert(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        rows = [(r.at, day_of(r.at), r.route, r.model, r.key_id, r.status, r.tokens_in, r.tokens_out,
                 int(r.tokens_exact), r.images, r.audio_s, r.gpu_s, r.wait_s, r.wall_s, r.error) for r in records]
        sql = f"INSERT INTO usage ({', '.join(_USAGE_COLS)}) VALUES ({', '.join('?' * len(_USAGE_COLS))})"
        self._write(lambda tx: tx.executemany(sql, rows))

    def usage_recent(self, *, since: float | None, until: float | None, key_id: str | None,
                     model: str | None, limit: int) -> list[dict[str, Any]]:
        where, params = _filters(since, until, key_id, model)
        rows = self._read(lambda tx: tx.query(
            f"SELECT {', '.join(c for c in _USAGE_COLS if c != 'day')} FROM usage WHERE {where} "
            "ORDER BY at DESC, id DESC LIMIT ?", (*params, limit)))
        for r in rows:
            r["tokens_exact"] = bool(r["tokens_exact"])
        rows.reverse()
        return rows

    def usage_days(self, *, since: float | None, until: float | None, key_id: str | None,
                   model: str | None) -> list[dict[str, Any]]:
        where, params = _filters(since, until, key_id, model)

        def read(tx: Tx) -> list[dict[str, Any]]:
            raw = tx.query(f"SELECT day, model, coalesce(key_id, '-') AS key_id, {_SUMS} FROM usage WHERE {where} "
                           "GROUP BY day, model, coalesce(key_id, '-')", params)
            dwhere, dparams = ["1=1"], []
            for clause, value in (("day >= ?", since and day_of(since)), ("day <= ?", until and day_of(until)),
                                  ("key_id = ?", key_id), ("model = ?", model)):
                if value is not None:
                    dwhere.append(clause)
                    dparams.append(value)
            rolled = tx.query(
                "SELECT day, model, key_id, sum(requests) AS requests, sum(errors) AS errors, "
                "sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out, sum(images) AS images, "
                f"sum(audio_s) AS audio_s, sum(gpu_s) AS gpu_s FROM usage_daily WHERE {' AND '.join(dwhere)} "
                "GROUP BY day, model, key_id", dparams)
            return raw + rolled

        seen: set[tuple[str, str, str]] = set()
        out: list[dict[str, Any]] = []
        for r in self._read(read):  # raw records first: a rolled-up day still holding records reads them
            slot = (r["day"], r["model"], r["key_id"])
            if slot in seen:
                continue
            seen.add(slot)
            out.append({"day": r["day"], "model": r["model"],
                        "key_id": None if r["key_id"] == "-" else r["key_id"], "requests": int(r["requests"]),
                        "errors": int(r["errors"] or 0), "tokens_in": int(r["tokens_in"] or 0),
                        "tokens_out": int(r["tokens_out"] or 0), "images": int(r["images"] or 0),
                        "audio_s": float(r["audio_s"] or 0), "gpu_s": float(r["gpu_s"] or 0)})
        return sorted(out, key=lambda r: (r["day"], r["model"], r["key_id"] or ""))

    def usage_rollup(self, before_day: str) -> int:
        def roll(tx: Tx) -> int:
            rows = tx.query(f"SELECT day, model, coalesce(key_id, '-') AS key_id, {_SUMS} FROM usage "
                            "WHERE day < ? GROUP BY day, model, coalesce(key_id, '-')", (before_day,))
            days = sorted({r["day"] for r in rows})
            for day in days:  # a day is rolled up whole, so a rerun replaces rather than adds
                tx.execute("DELETE FROM usage_daily WHERE day = ?", (day,))
            tx.executemany(
                "INSERT INTO usage_daily (day, model, key_id, requests, errors, tokens_in, tokens_out, images, "
                "audio_s, gpu_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r["day"], r["model"], r["key_id"], r["requests"], r["errors"] or 0, r["tokens_in"],
                  r["tokens_out"], r["images"], r["audio_s"], r["gpu_s"]) for r in rows])
            return len(days)

        return self._write(roll)

    def usage_prune(self, before: float) -> int:
        return self._write(lambda tx: tx.execute(
            "DELETE FROM usage WHERE at < ? AND day IN (SELECT day FROM usage_daily)", (before,)))

    # -- state documents
    def state_get(self, name: str) -> dict[str, Any] | None:
        rows = self._read(lambda tx: tx.query("SELECT data FROM state WHERE name = ?", (name,)))
        if not rows:
            return None
        data = json.loads(rows[0]["data"])
        return data if isinstance(data, dict) else None

    def _put_state(self, name: str, data: dict[str, Any]) -> Callable[[Tx], object]:
        text = json.dumps(data, sort_keys=True)
        now = time.time()

        def put(tx: Tx) -> None:
            if tx.execute("UPDATE state SET data = ?, updated = ? WHERE name = ?", (text, now, name)) == 0:
                tx.execute("INSERT INTO state (name, data, updated) VALUES (?, ?, ?)", (name, text, now))
        return put

    def state_put(self, name: str, data: dict[str, Any]) -> None:
        self._write(self._put_state(name, data))

    def state_put_nowait(self, name: str, data: dict[str, Any]) -> None:
        self._write_nowait(self._put_state(name, data))

    # -- jobs
    def _job_create(self, job: NewJob) -> Callable[[Tx], tuple[Job, bool]]:
        def create(tx: Tx) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                found = tx.query(f"SELECT {_JOB_COLS} FROM jobs WHERE key_id = ? AND idempotency_key = ?",
                                 (job.key_id, job.idempotency_key))
                if found:
                    return _job(found[0]), False
            rows = tx.query("INSERT INTO jobs (id, route, model, key_id, idempotency_key, body_hash, body, base_url, "
                            f"state, attempts, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) RETURNING {_JOB_COLS}",
                            (job.id, job.route, job.model, job.key_id, job.idempotency_key, job.body_hash, job.body,
                             job.base_url, JobState.QUEUED.value, time.time()))
            return _job(rows[0]), True

        return create

    def job_create(self, job: NewJob) -> tuple[Job, bool]:
        return self._write(self._job_create(job))

    async def ajob_create(self, job: NewJob) -> tuple[Job, bool]:
        return await self._awrite(self._job_create(job))

    def job_get(self, job_id: str) -> Job | None:
        rows = self._read(lambda tx: tx.query(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,)))
        return _job(rows[0]) if rows else None

    def job_position(self, job: Job) -> int:
        rows = self._read(lambda tx: tx.query(
            "SELECT count(*) AS n FROM jobs WHERE state = ? AND model = ? AND seq < ?",
            (JobState.QUEUED.value, job.model, job.seq)))
        return int(rows[0]["n"])

    def _job_claim(self, owner: str, models: Iterable[str], job_id: str | None) -> Callable[[Tx], Job | None] | None:
        if job_id is not None:
            pick, params = "SELECT seq FROM jobs WHERE id = ? AND state = ?", [job_id, JobState.QUEUED.value]
        else:
            names = list(models)
            if not names:
                return None
            pick = (f"SELECT seq FROM jobs WHERE state = ? AND model IN ({', '.join('?' * len(names))}) "
                    "ORDER BY seq LIMIT 1")
            params = [JobState.QUEUED.value, *names]
        sql = (f"UPDATE jobs SET state = ?, attempts = attempts + 1, owner = ?, started = ? "
               f"WHERE seq = ({pick} {self.skip_locked}) AND state = ? RETURNING {_JOB_COLS}")

        def claim(tx: Tx) -> Job | None:
            rows = tx.query(sql, (JobState.RUNNING.value, owner, time.time(), *params, JobState.QUEUED.value))
            return _job(rows[0]) if rows else None
        return claim

    def job_claim(self, owner: str, *, models: Iterable[str] = (), job_id: str | None = None) -> Job | None:
        fn = self._job_claim(owner, models, job_id)
        return None if fn is None else self._write(fn)

    async def ajob_claim(self, owner: str, *, models: Iterable[str] = (), job_id: str | None = None) -> Job | None:
        fn = self._job_claim(owner, models, job_id)
        return None if fn is None else await self._awrite(fn)

    def _settle(self, job: Job, state: JobState, error: str | None, result: str | None) -> bool:
        finished = time.time() if state.finished else None
        return self._write(lambda tx: tx.execute(
            "UPDATE jobs SET state = ?, error = ?, result = ?, finished = ? "
            "WHERE id = ? AND state = ? AND attempts = ?",
            (state.value, error, result, finished, job.id, JobState.RUNNING.value, job.attempts))) == 1

    def job_finish(self, job: Job, result: str) -> bool:
        return self._settle(job, JobState.SUCCEEDED, None, result)

    def job_fail(self, job: Job, error: str, retry: bool) -> bool:
        return self._settle(job, JobState.QUEUED if retry else JobState.FAILED, error, None)

    def job_cancel(self, job_id: str) -> Job | None:
        def cancel(tx: Tx) -> Job | None:
            tx.execute("UPDATE jobs SET state = ?, finished = ? WHERE id = ? AND state IN (?, ?)",
                       (JobState.CANCELLED.value, time.time(), job_id, JobState.QUEUED.value,
                        JobState.RUNNING.value))
            rows = tx.query(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,))
            return _job(rows[0]) if rows else None

        return self._write(cancel)

    def jobs_requeue(self, owner: str) -> list[Job]:
        rows = self._write(lambda tx: tx.query(
            f"UPDATE jobs SET state = ?, error = coalesce(error, ?) WHERE state = ? AND owner = ? "
            f"RETURNING {_JOB_COLS}",
            (JobState.QUEUED.value, "interrupted: the daemon stopped while it ran", JobState.RUNNING.value, owner)))
        return [_job(r) for r in rows]

    def jobs_requeue_orphans(self, expire_s: float, max_attempts: int) -> list[Job]:
        # One UPDATE: on PostgreSQL a second box's concurrent UPDATE waits for the row and re-checks
        # `state = running` after the first commits, so it skips the job; SQLite has one writer.
        now = time.time()
        rows = self._write(lambda tx: tx.query(
            "UPDATE jobs SET state = CASE WHEN attempts < ? THEN ? ELSE ? END, "
            "finished = CASE WHEN attempts < ? THEN NULL ELSE ? END, error = ? "
            f"WHERE state = ? AND owner IN (SELECT box_id FROM boxes WHERE heartbeat_at <= {self.now_sql} - ?) "
            f"RETURNING {_JOB_COLS}",
            (max_attempts, JobState.QUEUED.value, JobState.FAILED.value, max_attempts, now,
             "interrupted: the box running it stopped heartbeating", JobState.RUNNING.value, expire_s)))
        return sorted((_job(r) for r in rows), key=lambda j: j.seq)

    def jobs_queued(self, models: Iterable[str]) -> list[Job]:
        names = list(models)
        if not names:
            return []
        rows = self._read(lambda tx: tx.query(
            f"SELECT {_JOB_COLS} FROM jobs WHERE state = ? AND model IN ({', '.join('?' * len(names))}) "
            "ORDER BY seq", (JobState.QUEUED.value, *names)))
        return [_job(r) for r in rows]

    def jobs_prune(self, before: float) -> int:
        return self._write(lambda tx: tx.execute(
            "DELETE FROM jobs WHERE state IN (?, ?, ?) AND finished < ?",
            (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value, before)))

    # -- fleet registry
    def count_request(self, key_id: str, window_start: int) -> int:
        def bump(tx: Tx) -> int:
            rows = tx.query("INSERT INTO request_windows (key_id, window_start, requests) VALUES (?, ?, 1) "
                            "ON CONFLICT (key_id, window_start) DO UPDATE SET requests = request_windows.requests + 1 "
                            "RETURNING requests", (key_id, window_start))
            n = int(rows[0]["requests"])
            if n == 1:  # a new window: the key's older ones are spent (one delete per key and window)
                tx.execute("DELETE FROM request_windows WHERE key_id = ? AND window_start < ?", (key_id, window_start))
            return n
        return self._write(bump)

    def put_box(self, box: BoxRecord) -> None:
        residency = json.dumps(box.residency, sort_keys=True)
        self._write(lambda tx: tx.execute(
            f"INSERT INTO boxes ({_BOX_COLS}) VALUES (?, ?, ?, ?, ?, ?, {self.now_sql}, {self.now_sql}) "
            "ON CONFLICT (box_id) DO UPDATE SET url = excluded.url, version = excluded.version, "
            "api_version = excluded.api_version, state = excluded.state, residency = excluded.residency, "
            "heartbeat_at = excluded.heartbeat_at",
            (box.box_id, box.url, box.version, box.api_version, box.state, residency)))

    def boxes(self, live_within_s: float | None = None) -> list[BoxRecord]:
        params: tuple[float, ...] = ()
        if live_within_s is None:
            sql = f"SELECT {_BOX_COLS} FROM boxes ORDER BY box_id"
        else:
            sql = f"SELECT {_BOX_COLS} FROM boxes WHERE heartbeat_at > {self.now_sql} - ? ORDER BY box_id"
            params = (live_within_s,)
        return [_box(r) for r in self._read(lambda tx: tx.query(sql, params))]

    def remove_box(self, box_id: str) -> bool:
        return self._write(lambda tx: tx.execute("DELETE FROM boxes WHERE box_id = ?", (box_id,))) == 1

    def boxes_forget(self, older_than_s: float) -> list[str]:
        rows = self._write(lambda tx: tx.query(
            f"DELETE FROM boxes WHERE heartbeat_at <= {self.now_sql} - ? "
            "AND box_id NOT IN (SELECT owner FROM jobs WHERE state = ? AND owner IS NOT NULL) RETURNING box_id",
            (older_than_s, JobState.RUNNING.value)))
        return sorted(str(r["box_id"]) for r in rows)

    # -- copy
    def dump(self) -> Iterator[tuple[str, list[str], list[tuple[Any, ...]]]]:
        for table in TABLES:
            rows = self._read(lambda tx, t=table: tx.query(f"SELECT * FROM {t}"))  # type: ignore[misc]
            columns = list(rows[0]) if rows else []
            yield table, columns, [tuple(r[c] for c in columns) for r in rows]

    def load(self, table: str, columns: list[str], rows: Sequence[tuple[Any, ...]]) -> None:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        if not rows:
            return

        def put(tx: Tx) -> None:
            if tx.query(f"SELECT count(*) AS n FROM {table}")[0]["n"]:
                raise ValueError(f"table {table} of {self.describe()} is not empty")
            tx.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           rows)
        self._write(put)
        self._after_load(table, columns)

    def _after_load(self, table: str, columns: list[str]) -> None:
        """Backends whose serial columns need resetting after explicit ids were inserted."""
