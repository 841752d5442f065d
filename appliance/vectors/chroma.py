"""Chroma, embedded: a PersistentClient on a directory under the daemon's state directory.

Chroma takes no inter-process lock on its directory, so the daemon is the ONLY process that opens it:
the CLI goes through the daemon's API, never here. Every call passes its embeddings (Chroma's default
embedding function would download a model). Calls are synchronous; the caller runs them off the loop.
It must not decide what is stored (appliance.vectors.service does).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import chromadb
from chromadb.config import Settings

from .backend import Chunk, Hit

# Cosine distance; search_ef above Chroma's default keeps recall@10 >= 0.95 at 100k chunks (bench/vectors.py)
HNSW = {"hnsw:space": "cosine", "hnsw:construction_ef": 200, "hnsw:search_ef": 200, "hnsw:M": 32}


class ChromaBackend:
    name = "chroma"

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False,
                                                                                  allow_reset=False))
        self.lock = threading.Lock()
        self.collections: dict[str, Any] = {}

    def describe(self) -> str:
        return f"chroma:{self.path}"

    def _collection(self, name: str) -> Any:
        col = self.collections.get(name)
        if col is None:
            col = self.client.get_or_create_collection(name, metadata=HNSW, embedding_function=None)
            self.collections[name] = col
        return col

    def add(self, collection: str, dimension: int, chunks: list[Chunk]) -> None:
        if not chunks:
            return
        with self.lock:
            col = self._collection(collection)
            step = 2000
            for i in range(0, len(chunks), step):
                part = chunks[i:i + step]
                col.add(ids=[c.id for c in part], embeddings=[c.vector for c in part],
                        documents=[c.text for c in part], metadatas=[{"file_id": c.file_id} for c in part])

    def search(self, collection: str, vector: list[float], k: int, file_ids: list[str] | None) -> list[Hit]:
        if file_ids is not None and not file_ids:
            return []
        col = self._collection(collection)
        where: dict[str, Any] | None = None
        if file_ids is not None:
            where = {"file_id": file_ids[0]} if len(file_ids) == 1 else {"file_id": {"$in": file_ids}}
        res = col.query(query_embeddings=[vector], n_results=k, where=where,
                        include=["documents", "metadatas", "distances"])
        ids, docs, metas, dists = res["ids"][0], res["documents"], res["metadatas"], res["distances"]
        assert docs is not None and metas is not None and dists is not None
        return [Hit(i, str(m["file_id"]), d or "", 1.0 - float(s))
                for i, d, m, s in zip(ids, docs[0], metas[0], dists[0], strict=True)]

    def texts(self, collection: str, ids: list[str]) -> list[str]:
        if not ids:
            return []
        got = self._collection(collection).get(ids=ids, include=["documents"])
        by_id = dict(zip(got["ids"], got["documents"] or [], strict=True))
        return [by_id[i] or "" for i in ids if i in by_id]

    def delete_file(self, collection: str, file_id: str) -> None:
        with self.lock:
            self._collection(collection).delete(where={"file_id": file_id})

    def count(self, collection: str) -> int:
        return int(self._collection(collection).count())

    def drop(self, collection: str) -> None:
        with self.lock:
            if any(c.name == collection for c in self.client.list_collections()):
                self.client.delete_collection(collection)
            self.collections.pop(collection, None)

    def close(self) -> None:
        """Chroma's client writes as it goes; nothing to flush."""
