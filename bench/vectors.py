"""Retrieval's vector databases side by side in one run, and search through the gateway.

- Chroma (embedded, the backend class the daemon uses) versus milvus-lite (the Milvus backend on a local
  file), each given the same N 384-dimension unit vectors: insert rate (vectors/s, in the daemon's
  batches of 2,000), query rate at top-10 (one query at a time, as the daemon asks), and recall@10
  against exact search (numpy, brute-force cosine) over the same queries. The vectors are clustered like
  sentence embeddings (1,000 topic centres plus noise), not uniform noise, on which no index is useful.
- End-to-end search latency through a running daemon (`appliance serve` with the embed worker and the
  packaged all-MiniLM-L6-v2 on the CPU): POST /v1/vector_stores/{id}/search on a store of one 2,000-note file
  (254 chunks of the auto strategy, up to 254 MiniLM tokens each),
  the query embedded on each request, p50 and p99.

Ends with one line of JSON: chroma_insert_per_s, milvus_insert_per_s, chroma_qps, milvus_qps,
chroma_recall_at_10, milvus_recall_at_10, search_p50_ms, search_p99_ms. Target: recall@10 >= 0.95 for both.
Run: python bench/vectors.py [--vectors 100000] [--queries 200] [--searches 200]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from appliance.vectors.backend import Chunk, VectorBackend  # noqa: E402

DIM = 384
STORE = "vs_bench"


def dataset(n: int, queries: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        picks = centres[rng.integers(0, len(centres), count)]
        v = picks + 0.35 * rng.standard_normal((count, DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    return draw(n), draw(queries)


def exact_top10(data: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    out = []
    for q in queries:
        scores = data @ q
        out.append(set(np.argpartition(-scores, 10)[:10].tolist()))
    return out


def measure(backend: VectorBackend, data: np.ndarray, queries: np.ndarray, truth: list[set[int]]) -> dict[str, float]:
    chunks = [Chunk(str(i), f"file-{i // 1000}", f"chunk {i}", row.tolist()) for i, row in enumerate(data)]
    t0 = time.perf_counter()
    backend.add(STORE, DIM, chunks)
    insert_s = time.perf_counter() - t0
    backend.search(STORE, queries[0].tolist(), 10, None)  # first query: load/warm
    found = []
    t0 = time.perf_counter()
    for q in queries:
        found.append({int(h.id) for h in backend.search(STORE, q.tolist(), 10, None)})
    query_s = time.perf_counter() - t0
    recall = statistics.fmean(len(f & t) / 10 for f, t in zip(found, truth, strict=True))
    return {"insert_per_s": len(chunks) / insert_s, "qps": len(queries) / query_s, "recall_at_10": recall}


def gateway_latency(searches: int) -> tuple[float, float]:
    from gateway.conftest import launch, worker_engine

    tmp = Path(tempfile.mkdtemp(prefix="bench-vectors-"))
    doc = {"engines": {"embed": worker_engine("embed", "all-MiniLM-L6-v2")},
           "models": {"minilm": {"engine": "embed", "modality": "embedding", "vram_gb": 0.2}}}
    gw = launch(tmp, doc, keys={"user": False})
    try:
        client = gw.client()
        text = " ".join(f"Note {i}: the river number {i} flows past town {i % 37} into lake {i % 11}." for i in
                        range(2000))
        f = client.files.create(file=("notes.txt", io.BytesIO(text.encode())), purpose="assistants")
        vs = client.vector_stores.create(name="bench", file_ids=[f.id])
        deadline = time.monotonic() + 600
        while client.vector_stores.retrieve(vs.id).status != "completed":
            if time.monotonic() > deadline:
                raise SystemExit("the bench store did not finish indexing in 600 s")
            time.sleep(0.2)
        lat: list[float] = []
        for i in range(searches + 5):
            t0 = time.perf_counter()
            resp = gw.request("POST", f"/v1/vector_stores/{vs.id}/search",
                              {"query": f"which river flows into lake {i % 11}?", "max_num_results": 10})
            if resp.status != 200:
                raise SystemExit(f"search failed: {resp.status} {resp.body[:200]!r}")
            if i >= 5:  # the first few warm the model
                lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        return statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    finally:
        gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--searches", type=int, default=200)
    args = ap.parse_args()
    data, queries = dataset(args.vectors, args.queries)
    truth = exact_top10(data, queries)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as tmp:
        from appliance.vectors.chroma import ChromaBackend
        from appliance.vectors.milvus import MilvusBackend

        for name, make in (("chroma", lambda: ChromaBackend(Path(tmp) / "chroma")),
                           ("milvus", lambda: MilvusBackend(str(Path(tmp) / "milvus.db")))):
            backend = make()
            try:
                r = measure(backend, data, queries, truth)
            finally:
                backend.close()
            print(f"{name:7s} insert {r['insert_per_s']:9.0f}/s  top-10 {r['qps']:7.1f} q/s  "
                  f"recall@10 {r['recall_at_10']:.3f}  ({args.vectors} x {DIM})", flush=True)
            results.update({f"{name}_insert_per_s": round(r["insert_per_s"], 1), f"{name}_qps": round(r["qps"], 1),
                            f"{name}_recall_at_10": round(r["recall_at_10"], 4)})
    p50, p99 = gateway_latency(args.searches)
    print(f"gateway search (embedding included): p50 {p50:.1f} ms  p99 {p99:.1f} ms", flush=True)
    results.update({"search_p50_ms": round(p50, 2), "search_p99_ms": round(p99, 2)})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
