"""The SQL of retrieval's records: uploaded files, vector stores, the files attached to them and batches.

Rows cross as plain dicts keyed by column name (the columns of migrations `0006_files` and
`0007_vector_stores`, `0010_vector_store_lifecycle`); JSON columns (`metadata`, `attributes`, `chunking`,
`last_error`, `expires_after`) stay JSON text
here and are decoded by the caller (appliance.vectors.records). Written once over a transaction (`Tx`)
for both backends, mixed into `SqlStore`.
It must not open connections nor know where the bytes of a file or the vectors of a chunk live.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .migrations import Tx

T = TypeVar("T")

FILE_COLS = ("id", "key_id", "filename", "purpose", "bytes", "created")
STORE_COLS = ("id", "key_id", "name", "metadata", "embedding_model", "dimension", "created", "last_active",
              "expires_after", "description")
ATTACH_COLS = ("vector_store_id", "file_id", "batch_id", "status", "last_error", "attributes", "chunking",
               "usage_bytes", "chunks", "created")
STORE_UPDATABLE = frozenset({"name", "metadata", "embedding_model", "dimension", "last_active", "expires_after"})
ATTACH_UPDATABLE = frozenset({"status", "last_error", "attributes", "usage_bytes", "chunks"})


def _insert(table: str, cols: tuple[str, ...], row: dict[str, Any]) -> Callable[[Tx], int]:
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    return lambda tx: tx.execute(sql, tuple(row[c] for c in cols))


def _update_sql(table: str, allowed: frozenset[str], fields: dict[str, Any], where: str) -> str:
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"{table}: cannot update {', '.join(sorted(unknown))}")
    return f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in fields)} WHERE {where}"


class RetrievalSql:
    def _write(self, fn: Callable[[Tx], T]) -> T:
        raise NotImplementedError

    def _read(self, fn: Callable[[Tx], T]) -> T:
        raise NotImplementedError

    # -- files
    def file_insert(self, row: dict[str, Any]) -> None:
        self._write(_insert("files", FILE_COLS, row))

    def file_get(self, file_id: str) -> dict[str, Any] | None:
        rows = self._read(lambda tx: tx.query(f"SELECT {', '.join(FILE_COLS)} FROM files WHERE id = ?", (file_id,)))
        return rows[0] if rows else None

    def file_list(self, purpose: str | None = None) -> list[dict[str, Any]]:
        where, params = ("WHERE purpose = ?", (purpose,)) if purpose else ("", ())
        return self._read(lambda tx: tx.query(
            f"SELECT {', '.join(FILE_COLS)} FROM files {where} ORDER BY created, id", params))

    def file_delete(self, file_id: str) -> bool:
        """Delete the file's row and every attachment of it (their chunks are the caller's to drop)."""
        def delete(tx: Tx) -> bool:
            tx.execute("DELETE FROM vector_store_files WHERE file_id = ?", (file_id,))
            return tx.execute("DELETE FROM files WHERE id = ?", (file_id,)) > 0
        return self._write(delete)

    # -- vector stores
    def vstore_insert(self, row: dict[str, Any]) -> None:
        self._write(_insert("vector_stores", STORE_COLS, {"expires_after": None, "description": None, **row}))

    def vstore_get(self, store_id: str) -> dict[str, Any] | None:
        rows = self._read(lambda tx: tx.query(
            f"SELECT {', '.join(STORE_COLS)} FROM vector_stores WHERE id = ?", (store_id,)))
        return rows[0] if rows else None

    def vstore_list(self) -> list[dict[str, Any]]:
        return self._read(lambda tx: tx.query(
            f"SELECT {', '.join(STORE_COLS)} FROM vector_stores ORDER BY created, id"))

    def vstore_update(self, store_id: str, fields: dict[str, Any]) -> None:
        sql = _update_sql("vector_stores", STORE_UPDATABLE, fields, "id = ?")
        self._write(lambda tx: tx.execute(sql, (*fields.values(), store_id)))

    def vstore_delete(self, store_id: str) -> bool:
        def delete(tx: Tx) -> bool:
            tx.execute("DELETE FROM vector_store_files WHERE vector_store_id = ?", (store_id,))
            tx.execute("DELETE FROM vector_store_batches WHERE vector_store_id = ?", (store_id,))
            return tx.execute("DELETE FROM vector_stores WHERE id = ?", (store_id,)) > 0
        return self._write(delete)

    # -- files attached to vector stores
    def attach_insert(self, rows: list[dict[str, Any]], batch: dict[str, Any] | None = None) -> None:
        """Attach files (and record their batch) in one transaction."""
        def insert(tx: Tx) -> None:
            if batch is not None:
                _insert("vector_store_batches", ("id", "vector_store_id", "created"), batch)(tx)
            for row in rows:
                _insert("vector_store_files", ATTACH_COLS, row)(tx)
        self._write(insert)

    def attach_get(self, store_id: str, file_id: str) -> dict[str, Any] | None:
        rows = self._read(lambda tx: tx.query(
            f"SELECT {', '.join(ATTACH_COLS)} FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
            (store_id, file_id)))
        return rows[0] if rows else None

    def attach_list(self, store_id: str | None = None, *, batch_id: str | None = None,
                    file_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        where, params = ["1=1"], []
        for clause, value in (("vector_store_id = ?", store_id), ("batch_id = ?", batch_id),
                              ("file_id = ?", file_id), ("status = ?", status)):
            if value is not None:
                where.append(clause)
                params.append(value)
        return self._read(lambda tx: tx.query(
            f"SELECT {', '.join(ATTACH_COLS)} FROM vector_store_files WHERE {' AND '.join(where)} "
            "ORDER BY created, file_id", params))

    def attach_update(self, store_id: str, file_id: str, fields: dict[str, Any]) -> bool:
        sql = _update_sql("vector_store_files", ATTACH_UPDATABLE, fields, "vector_store_id = ? AND file_id = ?")
        return self._write(lambda tx: tx.execute(sql, (*fields.values(), store_id, file_id))) > 0

    def attach_transition(self, store_id: str, file_id: str, from_status: str, fields: dict[str, Any]) -> bool:
        """Update the attachment only while its status is still `from_status` (an indexing task and a cancel
        race to end it: the first to write wins, the other learns it lost)."""
        sql = _update_sql("vector_store_files", ATTACH_UPDATABLE, fields,
                          "vector_store_id = ? AND file_id = ? AND status = ?")
        return self._write(lambda tx: tx.execute(sql, (*fields.values(), store_id, file_id, from_status))) > 0

    def attach_delete(self, store_id: str, file_id: str) -> bool:
        return self._write(lambda tx: tx.execute(
            "DELETE FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?", (store_id, file_id))) > 0

    def batch_get(self, batch_id: str) -> dict[str, Any] | None:
        rows = self._read(lambda tx: tx.query(
            "SELECT id, vector_store_id, created, cancelled FROM vector_store_batches WHERE id = ?", (batch_id,)))
        return rows[0] if rows else None

    def batch_cancel(self, batch_id: str, at: float) -> bool:
        """Record that the batch's cancel was asked at `at` (once: a second ask keeps the first time)."""
        return self._write(lambda tx: tx.execute(
            "UPDATE vector_store_batches SET cancelled = ? WHERE id = ? AND cancelled IS NULL", (at, batch_id))) > 0
