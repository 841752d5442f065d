"""Milvus through pymilvus: a server URI (the full profile's shared database) or a milvus-lite file.

One collection per vector store with a string primary key, the file id, the text and a FLAT cosine
index (exact search: at the sizes one box keeps, it is fast enough and its recall is 1). Calls are
synchronous; the caller runs them off the loop. Every call to the server carries a deadline (`CALL_TIMEOUT_S`).
Reads are Strong-consistent: a Milvus server's default (Bounded) lets a search see chunks a moment after
they were deleted, and miss chunks just written.
It must not decide what is stored (appliance.vectors.service does).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from pymilvus import DataType, MilvusClient

from .backend import Chunk, Hit

TEXT_MAX = 65535
CONNECT_TIMEOUT_S = 10.0  # a server that does not answer: the route's 503 names it
CALL_TIMEOUT_S = 120.0  # one insert of 2,000 rows, a flush, a search or a delete
STRONG = "Strong"


class MilvusBackend:
    name = "milvus"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MilvusClient(uri, timeout=CONNECT_TIMEOUT_S)
        self.lock = threading.Lock()
        self.loaded: set[str] = set()

    def describe(self) -> str:
        return f"milvus:{self.uri.split('@')[-1]}"  # never a password

    def _ready(self, name: str) -> bool:
        """Whether the collection exists; loaded into memory first (a server or a restarted milvus-lite
        keeps collections released until asked)."""
        if name in self.loaded:
            return True
        if not self.client.has_collection(name, timeout=CALL_TIMEOUT_S):
            return False
        self.client.load_collection(name, timeout=CALL_TIMEOUT_S)
        self.loaded.add(name)
        return True

    def _ensure(self, name: str, dimension: int) -> None:
        if self._ready(name):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("file_id", DataType.VARCHAR, max_length=128)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        index = self.client.prepare_index_params()
        index.add_index("vector", metric_type="COSINE", index_type="FLAT")
        self.client.create_collection(name, schema=schema, index_params=index, consistency_level=STRONG,
                                      timeout=CALL_TIMEOUT_S)
        self._ready(name)

    def add(self, collection: str, dimension: int, chunks: list[Chunk]) -> None:
        if not chunks:
            return
        with self.lock:
            self._ensure(collection, dimension)
            rows = [{"id": c.id, "file_id": c.file_id, "text": c.text.encode()[:TEXT_MAX].decode("utf-8", "ignore"),
                     "vector": c.vector} for c in chunks]
            for i in range(0, len(rows), 2000):
                self.client.insert(collection, rows[i:i + 2000], timeout=CALL_TIMEOUT_S)
            # Sealed segments are searched through the index; a growing one is scanned (milvus-lite: about
            # a second per query at 20k rows, against a tenth sealed), so a file's chunks are sealed at once.
            self.client.flush(collection, timeout=CALL_TIMEOUT_S)

    def search(self, collection: str, vector: list[float], k: int, file_ids: list[str] | None) -> list[Hit]:
        if (file_ids is not None and not file_ids) or not self._ready(collection):
            return []
        expr = "" if file_ids is None else f"file_id in {json.dumps(file_ids)}"
        res: Any = self.client.search(collection, data=[vector], limit=k, filter=expr,
                                      output_fields=["file_id", "text"], consistency_level=STRONG,
                                      timeout=CALL_TIMEOUT_S)
        return [Hit(str(h["id"]), h["entity"]["file_id"], h["entity"]["text"], float(h["distance"])) for h in res[0]]

    def texts(self, collection: str, ids: list[str]) -> list[str]:
        if not ids or not self._ready(collection):
            return []
        by_id: dict[str, str] = {}
        for i in range(0, len(ids), 1000):
            rows: Any = self.client.get(collection, ids=ids[i:i + 1000], output_fields=["text"],
                                        consistency_level=STRONG, timeout=CALL_TIMEOUT_S)
            by_id.update((str(r["id"]), str(r["text"])) for r in rows)
        return [by_id[i] for i in ids if i in by_id]

    def delete_file(self, collection: str, file_id: str) -> None:
        with self.lock:
            if self._ready(collection):
                self.client.delete(collection, filter=f"file_id == {json.dumps(file_id)}", timeout=CALL_TIMEOUT_S)

    def count(self, collection: str) -> int:
        if not self._ready(collection):
            return 0
        res: Any = self.client.query(collection, filter="", output_fields=["count(*)"], consistency_level=STRONG,
                                     timeout=CALL_TIMEOUT_S)
        return int(res[0]["count(*)"])

    def drop(self, collection: str) -> None:
        with self.lock:
            if self.client.has_collection(collection, timeout=CALL_TIMEOUT_S):
                self.client.drop_collection(collection, timeout=CALL_TIMEOUT_S)
            self.loaded.discard(collection)

    def close(self) -> None:
        self.client.close()
