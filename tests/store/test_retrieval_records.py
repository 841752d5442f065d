"""The retrieval records (files, vector stores, their attachments and batches) on both store backends."""

from __future__ import annotations

import json

import pytest

from appliance.store.sqlcore import SqlStore


def _file(fid: str, created: float, purpose: str = "assistants") -> dict[str, object]:
    return {"id": fid, "key_id": "k1", "filename": f"{fid}.txt", "purpose": purpose, "bytes": 3, "created": created}


def _attach(vs: str, fid: str, batch: str | None = None) -> dict[str, object]:
    return {"vector_store_id": vs, "file_id": fid, "batch_id": batch, "status": "in_progress", "last_error": None,
            "attributes": json.dumps({"a": 1}), "chunking": "{}", "usage_bytes": 0, "chunks": 0, "created": 1.0}


def test_files_stores_attachments_and_batches_round_trip(store: SqlStore) -> None:
    store.file_insert(_file("f1", 1.0))
    store.file_insert(_file("f2", 2.0, purpose="user_data"))
    assert [f["id"] for f in store.file_list()] == ["f1", "f2"]
    assert [f["id"] for f in store.file_list("user_data")] == ["f2"]
    store.vstore_insert({"id": "vs1", "key_id": "k1", "name": None, "metadata": "{}", "embedding_model": "m",
                         "dimension": None, "created": 1.0, "last_active": 1.0})
    store.vstore_update("vs1", {"dimension": 384, "name": "docs"})
    assert (store.vstore_get("vs1") or {})["dimension"] == 384
    store.attach_insert([_attach("vs1", "f1", "b1"), _attach("vs1", "f2", "b1")],
                        {"id": "b1", "vector_store_id": "vs1", "created": 1.0})
    assert store.batch_get("b1") == {"id": "b1", "vector_store_id": "vs1", "created": 1.0, "cancelled": None}
    assert store.batch_cancel("b1", 5.0) and not store.batch_cancel("b1", 6.0)
    assert (store.batch_get("b1") or {})["cancelled"] == 5.0
    assert (store.vstore_get("vs1") or {})["expires_after"] is None
    store.vstore_update("vs1", {"expires_after": json.dumps({"anchor": "last_active_at", "days": 2})})
    assert json.loads((store.vstore_get("vs1") or {})["expires_after"])["days"] == 2
    assert store.attach_update("vs1", "f1", {"status": "completed", "chunks": 4})
    assert not store.attach_transition("vs1", "f1", "in_progress", {"status": "cancelled"})  # lost the race
    assert (store.attach_get("vs1", "f1") or {})["status"] == "completed"
    assert [a["file_id"] for a in store.attach_list("vs1", status="completed")] == ["f1"]
    assert [a["file_id"] for a in store.attach_list(status="in_progress")] == ["f2"]
    assert len(store.attach_list("vs1", batch_id="b1")) == 2
    with pytest.raises(ValueError, match="cannot update"):
        store.attach_update("vs1", "f1", {"file_id": "x"})


def test_deleting_a_file_drops_its_attachments_and_a_store_its_batches(store: SqlStore) -> None:
    store.file_insert(_file("f1", 1.0))
    store.vstore_insert({"id": "vs1", "key_id": "k1", "name": None, "metadata": "{}", "embedding_model": "m",
                         "dimension": None, "created": 1.0, "last_active": 1.0})
    store.attach_insert([_attach("vs1", "f1", "b1")], {"id": "b1", "vector_store_id": "vs1", "created": 1.0})
    assert store.file_delete("f1") and store.file_get("f1") is None
    assert store.attach_list("vs1") == []
    assert store.vstore_delete("vs1") and store.vstore_get("vs1") is None and store.batch_get("b1") is None
    assert not store.file_delete("f1")
