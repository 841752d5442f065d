"""Retrieval's refusals decided before any vector database or embedding is touched, on a real SQLite store:
a search while a file is being indexed, a store built with another embedding model, a reindex with a model
that is not the configured one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.config import parse_config
from appliance.store import open_store
from appliance.vectors.service import Retrieval, RetrievalError


class NoEmbedder:
    """Fails the test if anything is embedded."""

    async def embed(self, model: str, texts: list[str], key: Any) -> list[list[float]]:
        raise AssertionError(f"nothing may be embedded here ({texts})")


def _service(tmp_path: Path, model: str = "minilm") -> Retrieval:
    config = parse_config({"server": {"state_dir": str(tmp_path)},
                           "engines": {"embed": {"kind": "worker", "worker": "embed", "model_path": "x", "port": 9}},
                           "models": {model: {"engine": "embed", "modality": "embedding"}}})
    store = open_store("", tmp_path)
    return Retrieval(config, store, NoEmbedder(), tmp_path / "files")  # type: ignore[arg-type]


def _store_row(service: Retrieval, model: str, status: str) -> dict[str, Any]:
    row = {"id": "vs_1", "key_id": "-", "name": None, "metadata": "{}", "embedding_model": model, "dimension": 384,
           "created": 1.0, "last_active": 1.0}
    service.store.vstore_insert(row)
    service.store.file_insert({"id": "file-1", "key_id": "-", "filename": "a.txt", "purpose": "assistants",
                               "bytes": 1, "created": 1.0})
    service.store.attach_insert([{"vector_store_id": "vs_1", "file_id": "file-1", "batch_id": None,
                                  "status": status, "last_error": None, "attributes": "{}",
                                  "chunking": json.dumps({"type": "static", "static": {}}), "usage_bytes": 0,
                                  "chunks": 0, "created": 1.0}])
    return row


def test_search_while_a_file_is_indexed_is_a_409_naming_the_file(tmp_path: Path) -> None:
    service = _service(tmp_path)
    row = _store_row(service, "minilm", "in_progress")
    with pytest.raises(RetrievalError) as err:
        asyncio.run(service.search(None, row, ["q"], 5, None, 0.0))
    assert (err.value.status, err.value.code) == (409, "vector_store_not_ready")
    assert "file-1" in str(err.value) and "poll" in str(err.value)
    assert (service.store.vstore_get("vs_1") or {})["last_active"] == 1.0  # nothing written
    service.store.close()


def test_a_store_built_with_another_model_is_refused_until_reindexed(tmp_path: Path) -> None:
    service = _service(tmp_path, model="e5")
    row = _store_row(service, "minilm", "completed")
    with pytest.raises(RetrievalError) as err:
        asyncio.run(service.search(None, row, ["q"], 5, None, 0.0))
    assert (err.value.status, err.value.code) == (409, "embedding_model_mismatch")
    assert "'minilm'" in str(err.value) and "appliance vectors reindex vs_1 --model e5" in str(err.value)
    with pytest.raises(RetrievalError) as attach:
        asyncio.run(service.attach(None, row, ["file-1"], {}, None, False, "file_id"))  # type: ignore[arg-type]
    assert attach.value.code == "embedding_model_mismatch"
    with pytest.raises(RetrievalError) as wrong:
        asyncio.run(service.reindex(None, row, "minilm"))
    assert (wrong.value.status, wrong.value.param) == (400, "model")
    service.store.close()


def test_a_milvus_without_uri_is_one_line_at_start_and_a_503_on_the_routes(tmp_path: Path) -> None:
    from appliance.vectors import backend

    config = parse_config({"server": {"state_dir": str(tmp_path)}, "vectors": {"backend": "milvus"}})
    assert backend.check(config) == ("vectors.uri: the milvus backend needs a server URI (http://host:19530) "
                                     "or a milvus-lite file path")
    assert backend.selected(parse_config({"server": {"state_dir": str(tmp_path)}})) == (
        "chroma", str(tmp_path / "data" / "chroma"))
    store = open_store("", tmp_path)
    service = Retrieval(config, store, NoEmbedder(), tmp_path / "files")  # type: ignore[arg-type]
    with pytest.raises(RetrievalError) as err:
        asyncio.run(service.backend())
    assert (err.value.status, err.value.code) == (503, "vectors_unavailable") and "vectors.uri" in str(err.value)
    store.close()
