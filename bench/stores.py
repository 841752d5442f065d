"""The store and the job queue, side by side in one run, on real servers.

- usage-record writes per second: one record per committed transaction (`*_txn_per_s`), and the
  usage sink's batched path (`*_records_per_s`), SQLite (the embedded store) versus PostgreSQL
  (127.0.0.1:5432, a database made and dropped for this run);
- durable enqueue plus dequeue per second through the JobQueue protocol: the local queue (a job row
  committed, then claimed) versus Kafka (the same row, plus a message produced with acks=all to a
  Tansu broker and consumed by a group member that claims it);
- the usage sink's added latency on a request: p99 of `record()` on the event loop while its writer
  task flushes batches to SQLite (it must not block: targets say none).

Durable means surviving kill -9 of the daemon: SQLite commits in WAL mode (synchronous=NORMAL), so a
committed row is in the OS's page cache when the process dies.
Targets on the 2-core dev box: >= 5,000 usage records/s and >= 5,000 queue messages/s embedded.
Ends with one line of JSON. Run: python bench/stores.py [--records 20000] [--jobs 5000] [--clients 8]
[--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import psycopg  # noqa: E402
from kafka_broker import tansu_broker  # noqa: E402

from appliance.jobs.kafka import KafkaQueue  # noqa: E402
from appliance.jobs.queue import JobQueue, LocalQueue  # noqa: E402
from appliance.store import NewJob, open_store  # noqa: E402
from appliance.store.sqlcore import SqlStore  # noqa: E402
from appliance.store.usage_sink import StoreUsageSink  # noqa: E402
from appliance.usage import UsageRecord  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def record(i: int) -> UsageRecord:
    return UsageRecord("/v1/chat/completions", "qwen", "k1", 200, tokens_in=i % 500, tokens_out=64, gpu_s=0.2,
                       wait_s=0.01, wall_s=0.3)


def per_s(n: int, fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def usage_txn_per_s(store: SqlStore, n: int) -> float:
    def run() -> None:
        for i in range(n):
            store.usage_insert([record(i)])
    return per_s(n, run)


def usage_records_per_s(store: SqlStore, n: int) -> float:
    async def run() -> None:
        sink = StoreUsageSink(store, flush_s=0.05, batch_max=5000)
        sink.start()
        for i in range(n):
            sink.record(record(i))
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await sink.close()
    return per_s(n, lambda: asyncio.run(run()))


async def queue_msgs_per_s(store: SqlStore, queue: JobQueue, n: int, producers: int, consumers: int) -> float:
    """`producers` clients submit n jobs in all (a committed row, then announced) while `consumers`
    workers take them (each take claims the row); messages per second from the first submit to the
    last take."""
    await queue.start(["qwen"])
    prefix = uuid.uuid4().hex[:6]
    left = [n]

    async def produce(p: int) -> None:
        for i in range(p, n, producers):
            job, _ = await store.ajob_create(NewJob(
                f"{prefix}-{i}", "/v1/chat/completions", "qwen", "-", None, "h", "{}", "http://x"))
            await queue.announce(job)

    async def consume() -> None:
        while left[0] > 0:
            left[0] -= 1
            await queue.take("qwen")

    t0 = time.perf_counter()
    await asyncio.gather(*(produce(p) for p in range(producers)), *(consume() for _ in range(consumers)))
    rate = n / (time.perf_counter() - t0)
    await queue.close()
    return rate


def sink_added_p99_us(store: SqlStore, n: int) -> float:
    async def run() -> list[float]:
        sink = StoreUsageSink(store, flush_s=0.01, batch_max=500)
        sink.start()
        costs: list[float] = []
        for i in range(n):
            rec = record(i)
            t0 = time.perf_counter_ns()
            sink.record(rec)
            costs.append((time.perf_counter_ns() - t0) / 1000)
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the writer task run between "requests"
        await sink.close()
        return costs
    costs = asyncio.run(run())
    return statistics.quantiles(costs, n=100)[98]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--jobs", type=int, default=5_000)
    ap.add_argument("--clients", type=int, default=8, help="concurrent submitters (HTTP clients)")
    ap.add_argument("--workers", type=int, default=4, help="concurrent job workers taking from the queue")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        pg_url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
        sqlite = open_store("", Path(tmp) / "sqlite")
        pg = open_store(pg_url, Path(tmp) / "pg")
        try:
            out["sqlite_txn_per_s"] = usage_txn_per_s(sqlite, args.records // 4)
            out["postgres_txn_per_s"] = usage_txn_per_s(pg, args.records // 4)
            out["sqlite_records_per_s"] = usage_records_per_s(sqlite, args.records)
            out["postgres_records_per_s"] = usage_records_per_s(pg, args.records)
            out["local_queue_msgs_per_s"] = asyncio.run(
                queue_msgs_per_s(sqlite, LocalQueue(sqlite, "bench", poll_s=1.0), args.jobs, args.clients,
                                 args.workers))
            with tansu_broker() as broker:
                kafka = KafkaQueue(sqlite, "bench", [broker], f"bench{uuid.uuid4().hex[:6]}.", "bench")
                out["kafka_msgs_per_s"] = asyncio.run(queue_msgs_per_s(sqlite, kafka, args.jobs // 5, args.clients,
                                                                       args.workers))
            out["usage_sink_added_p99_us"] = sink_added_p99_us(sqlite, args.records)
        finally:
            sqlite.close()
            pg.close()
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(f"{'measure':<34}{'embedded':>14}{'external':>14}{'ratio':>8}")
    for label, a, b in (("usage records, 1 per txn (/s)", "sqlite_txn_per_s", "postgres_txn_per_s"),
                        ("usage records, sink batches (/s)", "sqlite_records_per_s", "postgres_records_per_s"),
                        ("queue enqueue+dequeue (msgs/s)", "local_queue_msgs_per_s", "kafka_msgs_per_s")):
        print(f"{label:<34}{out[a]:>14,.0f}{out[b]:>14,.0f}{out[a] / out[b]:>8.1f}")
    print(f"{'usage sink record() p99 (us)':<34}{out['usage_sink_added_p99_us']:>14.1f}")
    print(json.dumps({k: round(v, 1) for k, v in out.items()}))


if __name__ == "__main__":
    main()
