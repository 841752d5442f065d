"""Retrieval on the box, driven by the official `openai` client against a running `appliance serve` with the
packaged embedding model (all-MiniLM-L6-v2 in the embed worker): upload, create a store, attach, poll, search,
filter by attributes, delete; the same flow over embedded Chroma, milvus-lite (a local file) and a Milvus
server process on loopback (tests/milvus_server.py, or the server $APPLIANCE_TEST_MILVUS names), through an
http:// URI. Retrieval quality on a small
corpus of paraphrase questions, the bad inputs of issue 16, and a restart that loses nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from test_vectors_cores import tiny_pdf

from .conftest import ROOT, Gateway, launch, wait_until, worker_engine

# Ten documents, one topic each; each question paraphrases a fact that only its document holds.
CORPUS: dict[str, tuple[str, str]] = {
    "bread.markdown": ("# Baking sourdough\nA sourdough loaf rises because wild yeast and lactic bacteria in the "
                 "starter ferment the flour. Feed the starter with equal weights of flour and water the night "
                 "before, and bake the loaf in a covered cast-iron pot at a high temperature for a crackling crust.",
                 "How do I get a crispy crust on my homemade fermented bread?"),
    "volcano.txt": ("Volcanoes erupt when molten rock called magma, lighter than the solid rock around it, rises "
                    "through cracks in the crust. Gas dissolved in the magma expands as pressure drops and can blow "
                    "the lava apart into ash and pumice.",
                    "What makes a mountain explode with lava and ash?"),
    "bikes.html": ("<html><head><style>p{}</style></head><body><h1>Bicycle maintenance</h1><p>Keep the chain "
                   "clean and lightly oiled, check tyre pressure every week, and replace brake pads when the "
                   "grooves wear flat.</p></body></html>",
                   "How should I look after my bike's chain and brakes?"),
    "tax.txt": ("Income tax returns must be filed by the deadline each year. Keep receipts for deductible expenses "
                "such as charitable donations and work equipment; late filing incurs a penalty and interest.",
                "When do I have to submit my yearly earnings declaration to the revenue office?"),
    "sleep.markdown": ("Adults need seven to nine hours of sleep a night. Avoid caffeine in the afternoon, keep the "
                 "bedroom dark and cool, and go to bed at the same time every day to fall asleep faster.",
                 "Tips for getting enough rest at night and nodding off quicker?"),
    "python.txt": ("In the Python programming language a list comprehension builds a new list from an iterable "
                   "in one expression, and a dictionary maps keys to values with fast lookups.",
                   "How can I create a list in one line of code from a sequence?"),
    "whales.txt": ("Blue whales are the largest animals that ever lived, reaching thirty metres in length. They "
                   "feed almost entirely on krill, filtering tonnes of the tiny crustaceans through baleen plates.",
                   "What does the biggest creature in the ocean eat?"),
    "garden.markdown": ("Tomato plants need full sun, deep watering at the roots and a stake or cage for support. "
                  "Pinch off the side shoots so the plant puts its energy into fruit.",
                  "How do I grow tomatoes in my vegetable patch?"),
    "coffee.txt": ("To brew espresso, force hot water at about nine bars of pressure through finely ground, "
                   "tightly tamped coffee for twenty-five to thirty seconds.",
                   "What pressure and grind does an espresso machine use?"),
    "chess.txt": ("In chess, castling moves the king two squares toward a rook and places the rook on the other "
                  "side of the king; it is allowed only if neither piece has moved and the king is not in check.",
                  "What are the rules for the special king and rook move in the board game?"),
}
TOPIC = {"bread.markdown": "food", "garden.markdown": "food", "coffee.txt": "food", "volcano.txt": "science",
         "whales.txt": "science", "python.txt": "tech", "bikes.html": "tech", "tax.txt": "life",
         "sleep.markdown": "life", "chess.txt": "games"}
YEAR = {name: 2015 + i for i, name in enumerate(CORPUS)}


def config(vectors: dict[str, Any]) -> dict[str, Any]:
    return {"engines": {"embed": worker_engine("embed", "all-MiniLM-L6-v2")},
            "models": {"minilm": {"engine": "embed", "modality": "embedding", "vram_gb": 0.2}},
            "vectors": vectors}


def vectors_section(backend: str, tmp: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """chroma: embedded in the daemon; milvus-lite: a local .db file (pymilvus runs its server in the daemon's
    process); milvus-server: a Milvus server process on loopback, reached by its http:// URI."""
    if backend == "chroma":
        return {"backend": "chroma"}
    if backend == "milvus-lite":
        return {"backend": "milvus", "uri": str(tmp / "milvus.db")}
    return {"backend": "milvus", "uri": request.getfixturevalue("milvus_uri")}


@pytest.fixture(scope="module", params=["chroma", "milvus-lite", "milvus-server"])
def box(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp(f"vectors-{request.param}")
    vectors = vectors_section(request.param, tmp, request)
    gw = launch(tmp, config(vectors), keys={"user": False, "other": False, "admin": True})
    gw.backend = request.param  # type: ignore[attr-defined]
    gw.vectors = vectors  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        gw.stop()


def poll_completed(client: openai.OpenAI, store_id: str) -> Any:
    def done() -> Any:
        vs = client.vector_stores.retrieve(store_id)
        return vs if vs.status == "completed" else None
    return wait_until(done, 120, f"vector store {store_id} to finish indexing", interval_s=0.2)


@pytest.fixture(scope="module")
def corpus(box: Gateway) -> dict[str, Any]:
    """The corpus uploaded, attached with attributes, and indexed: {"store": id, "files": {name: id}}."""
    client = box.client()
    files = {name: client.files.create(file=(name, io.BytesIO(text.encode())), purpose="assistants").id
             for name, (text, _) in CORPUS.items()}
    store = client.vector_stores.create(name="corpus", metadata={"owner": "tests"})
    assert store.status == "completed" and store.file_counts.total == 0
    for name, fid in files.items():
        attached = client.vector_stores.files.create(vector_store_id=store.id, file_id=fid,
                                                     attributes={"topic": TOPIC[name], "year": YEAR[name]})
        assert attached.status in ("in_progress", "completed")
    vs = poll_completed(client, store.id)
    assert vs.file_counts.completed == len(CORPUS) and vs.file_counts.failed == 0, vs
    return {"store": store.id, "files": files}


def test_the_right_document_ranks_in_the_top_3_for_nine_in_ten_paraphrases(box: Gateway,
                                                                              corpus: dict[str, Any]) -> None:
    client = box.client()
    names = {fid: name for name, fid in corpus["files"].items()}
    hits_top3, first = 0, 0
    for name, (_, question) in CORPUS.items():
        page = client.vector_stores.search(vector_store_id=corpus["store"], query=question, max_num_results=3)
        ranked = [names[r.file_id] for r in page.data]
        hits_top3 += name in ranked
        first += bool(ranked) and ranked[0] == name
        assert all(r.filename == names[r.file_id] and r.content[0].type == "text" for r in page.data)
        assert [r.score for r in page.data] == sorted((r.score for r in page.data), reverse=True)
    assert hits_top3 >= 0.9 * len(CORPUS), (box.backend, hits_top3)  # type: ignore[attr-defined]
    assert first >= 0.8 * len(CORPUS), (box.backend, first)  # type: ignore[attr-defined]


def test_indexing_and_queries_go_through_the_gateways_embeddings_route(box: Gateway, corpus: dict[str, Any]) -> None:
    """Metered like any request, under the caller's key (it waited for the model's residency lease there)."""
    box.client().vector_stores.search(vector_store_id=corpus["store"], query="espresso")

    def embedded() -> list[dict[str, Any]]:
        recent = box.usage()["recent"]
        return [r for r in recent if r["route"] == "/v1/embeddings" and r["model"] == "minilm"]
    rows = wait_until(lambda: len(embedded()) >= len(CORPUS) + 1 and embedded(), 10, "embeddings in the usage")
    assert {r["status"] for r in rows} == {200} and len({r["key_id"] for r in rows}) == 1
    assert rows[0]["key_id"] is not None and sum(r["tokens_in"] or 0 for r in rows) > 0


def test_attribute_filters_comparison_and_compound(box: Gateway, corpus: dict[str, Any]) -> None:
    client = box.client()
    names = {fid: name for name, fid in corpus["files"].items()}
    q = CORPUS["bread.markdown"][1]
    food = client.vector_stores.search(vector_store_id=corpus["store"], query=q, max_num_results=10,
                                       filters={"type": "eq", "key": "topic", "value": "food"})
    assert {names[r.file_id] for r in food.data} <= {"bread.markdown", "garden.markdown", "coffee.txt"}
    assert names[food.data[0].file_id] == "bread.markdown" and food.data[0].attributes["topic"] == "food"
    compound = client.vector_stores.search(
        vector_store_id=corpus["store"], query=q, max_num_results=10,
        filters={"type": "and", "filters": [{"type": "ne", "key": "topic", "value": "food"},
                                            {"type": "or", "filters": [{"type": "gte", "key": "year", "value": 2022},
                                                                       {"type": "in", "key": "topic",
                                                                        "value": ["science"]}]}]})
    want = {n for n in CORPUS if TOPIC[n] != "food" and (YEAR[n] >= 2022 or TOPIC[n] == "science")}
    assert {names[r.file_id] for r in compound.data} == want
    none = client.vector_stores.search(vector_store_id=corpus["store"], query=q,
                                       filters={"type": "eq", "key": "topic", "value": "nothing"})
    assert none.data == []


def test_query_list_score_threshold_and_result_shape(box: Gateway, corpus: dict[str, Any]) -> None:
    resp = box.request("POST", f"/v1/vector_stores/{corpus['store']}/search",
                       {"query": [CORPUS["whales.txt"][1], CORPUS["chess.txt"][1]], "max_num_results": 2})
    assert resp.status == 200, resp.body
    doc = resp.json()
    assert doc["object"] == "vector_store.search_results.page" and doc["has_more"] is False
    assert len(doc["search_query"]) == 2 and len(doc["data"]) == 2
    names = {fid: name for name, fid in corpus["files"].items()}
    assert {names[d["file_id"]] for d in doc["data"]} == {"whales.txt", "chess.txt"}
    high = box.request("POST", f"/v1/vector_stores/{corpus['store']}/search",
                       {"query": CORPUS["whales.txt"][1], "ranking_options": {"score_threshold": 0.99}})
    assert high.status == 200 and high.json()["data"] == []


def test_files_list_get_content_and_visibility(box: Gateway, corpus: dict[str, Any]) -> None:
    client = box.client()
    fid = corpus["files"]["volcano.txt"]
    got = client.files.retrieve(fid)
    assert (got.filename, got.purpose, got.bytes) == ("volcano.txt", "assistants", len(CORPUS["volcano.txt"][0]))
    assert client.files.content(fid).read() == CORPUS["volcano.txt"][0].encode()
    assert fid in {f.id for f in client.files.list()}
    with pytest.raises(openai.NotFoundError):
        box.client("other").files.retrieve(fid)  # another key's file
    assert box.client("admin").files.retrieve(fid).id == fid
    vsf = client.vector_stores.files.retrieve(vector_store_id=corpus["store"], file_id=fid)
    assert vsf.status == "completed" and vsf.attributes == {"topic": "science", "year": YEAR["volcano.txt"]}
    assert vsf.chunking_strategy.type == "static"
    listed = client.vector_stores.files.list(vector_store_id=corpus["store"], filter="completed", limit=100)
    assert len(listed.data) == len(CORPUS)


def test_batches_static_chunking_and_deleting_a_file_removes_its_chunks(box: Gateway) -> None:
    client = box.client()
    long_text = " ".join(f"Paragraph {i} says that the lighthouse keeper number {i} polished the lamp." for i in
                         range(200))
    a = client.files.create(file=("long.txt", io.BytesIO(long_text.encode())), purpose="user_data")
    b = client.files.create(file=("whales.txt", io.BytesIO(CORPUS["whales.txt"][0].encode())), purpose="assistants")
    vs = client.vector_stores.create(name="batch")
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=vs.id, file_ids=[a.id, b.id],
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}})
    assert batch.status == "completed" and batch.file_counts.completed == 2
    files = client.vector_stores.file_batches.list_files(vector_store_id=vs.id, batch_id=batch.id)
    assert {f.id for f in files.data} == {a.id, b.id}
    assert files.data[0].chunking_strategy.static.max_chunk_size_tokens == 100
    q = "What does the biggest creature in the ocean eat?"
    assert client.vector_stores.search(vector_store_id=vs.id, query=q).data[0].file_id == b.id
    assert client.files.delete(b.id).deleted
    after = client.vector_stores.search(vector_store_id=vs.id, query=q, max_num_results=50)
    assert after.data and all(r.file_id == a.id for r in after.data)
    assert client.vector_stores.retrieve(vs.id).file_counts.total == 1
    detached = client.vector_stores.files.delete(vector_store_id=vs.id, file_id=a.id)
    assert detached.deleted
    assert client.vector_stores.search(vector_store_id=vs.id, query=q).data == []
    assert client.vector_stores.delete(vs.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(vs.id)


def test_a_vector_store_files_content_is_its_chunks_in_tokens(box: Gateway, corpus: dict[str, Any]) -> None:
    """GET /v1/vector_stores/{id}/files/{file_id}/content: the parsed text as stored, chunk by chunk."""
    client = box.client()
    short = client.vector_stores.files.content(corpus["files"]["volcano.txt"], vector_store_id=corpus["store"])
    assert [(p.type, p.text) for p in short.data] == [("text", CORPUS["volcano.txt"][0])]
    html = client.vector_stores.files.content(corpus["files"]["bikes.html"], vector_store_id=corpus["store"])
    assert html.data[0].text.startswith("Bicycle maintenance") and "<p>" not in (html.data[0].text or "")
    words = " ".join(f"Lighthouse{i} keepers polished enormous brass lamps." for i in range(400))
    f = client.files.create(file=("lamps.txt", io.BytesIO(words.encode())), purpose="assistants")
    vs = client.vector_stores.create(name="content", file_ids=[f.id])
    poll_completed(client, vs.id)
    vsf = client.vector_stores.files.retrieve(f.id, vector_store_id=vs.id)
    auto = vsf.chunking_strategy.static  # type: ignore[union-attr]
    assert (auto.max_chunk_size_tokens, auto.chunk_overlap_tokens) == (254, 127)  # MiniLM's window, half overlap
    parts = [p.text or "" for p in client.vector_stores.files.content(f.id, vector_store_id=vs.id).data]
    assert len(parts) > 5 and parts[0].startswith("Lighthouse0 ") and parts[-1].endswith("lamps.")
    assert all(len(p.split()) < 254 for p in parts)  # word pieces: fewer words than tokens per chunk
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.content("file-nope", vector_store_id=vs.id)
    client.vector_stores.delete(vs.id)


def test_cancelling_a_batch_leaves_each_file_completed_or_cancelled_without_chunks(box: Gateway) -> None:
    """Against the daemon the race is real (tests/test_vectors_lifecycle.py decides it): whatever had
    completed stays searchable, every cancelled file has no chunk left, the batch ends `cancelled`."""
    client = box.client()
    ids = [client.files.create(file=(f"river{i}.txt", io.BytesIO(" ".join(
        f"River {i} sentence {j} describes how water flows." for j in range(1500)).encode())), purpose="assistants").id
           for i in range(4)]
    vs = client.vector_stores.create(name="cancel")
    batch = client.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=ids)
    cancelling = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=vs.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_until(lambda: (b := client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=vs.id))
                      .status == "cancelled" and b, 120, "the batch to be cancelled")
    assert done.file_counts.cancelled >= 1 and done.file_counts.in_progress == 0
    files = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id).data
    status = {f.id: f.status for f in files}
    assert set(status.values()) <= {"completed", "cancelled"}
    for fid, st in status.items():
        parts = client.vector_stores.files.content(fid, vector_store_id=vs.id).data
        assert (len(parts) > 0) == (st == "completed"), (fid, st)
    hits = client.vector_stores.search(vector_store_id=vs.id, query="how water flows", max_num_results=50).data
    assert {h.file_id for h in hits} <= {fid for fid, st in status.items() if st == "completed"}
    client.vector_stores.delete(vs.id)


def test_expires_after_sets_expires_at_from_the_last_activity(box: Gateway) -> None:
    """The expiry itself (status expired, refusals, the maintenance pass) runs on an injected clock in
    tests/test_vectors_lifecycle.py; here the daemon's shapes."""
    client = box.client()
    vs = client.vector_stores.create(name="expiring", expires_after={"anchor": "last_active_at", "days": 3})
    assert vs.expires_after is not None and (vs.expires_after.anchor, vs.expires_after.days) == ("last_active_at", 3)
    assert vs.expires_at == vs.last_active_at + 3 * 86400 and vs.status == "completed"
    cleared = client.vector_stores.update(vs.id, expires_after=None)
    assert cleared.expires_after is None and cleared.expires_at is None
    bad = box.request("POST", "/v1/vector_stores", {"expires_after": {"anchor": "last_active_at", "days": 0}})
    assert bad.status == 400 and _error(bad)["param"] == "expires_after.days"
    assert "vector-store-expiry" in box.status()["maintenance"]  # the pass that deletes expired stores
    client.vector_stores.delete(vs.id)


def _error(resp: Any) -> dict[str, Any]:
    err: dict[str, Any] = resp.json()["error"]
    return err


def test_bad_input_is_a_clear_4xx_and_writes_nothing(box: Gateway, corpus: dict[str, Any]) -> None:
    client = box.client()
    before = len(client.vector_stores.files.list(vector_store_id=corpus["store"], limit=100).data)
    with pytest.raises(openai.NotFoundError) as unknown_store:
        client.vector_stores.search(vector_store_id="vs_nope", query="x")
    assert "vs_nope" in str(unknown_store.value)
    missing = box.request("POST", f"/v1/vector_stores/{corpus['store']}/files", {"file_id": "file-nope"})
    assert missing.status == 404 and _error(missing)["param"] == "file_id"
    exe = client.files.create(file=("tool.exe", io.BytesIO(b"MZ\x90\x00")), purpose="assistants")
    unsupported = box.request("POST", f"/v1/vector_stores/{corpus['store']}/files", {"file_id": exe.id})
    assert unsupported.status == 400 and _error(unsupported)["code"] == "unsupported_file", unsupported.body
    with pytest.raises(openai.BadRequestError) as empty:
        client.files.create(file=("empty.txt", io.BytesIO(b"")), purpose="assistants")
    assert "empty" in str(empty.value)
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("a.txt", io.BytesIO(b"hi")), purpose="fine-tune")
    assert "purpose" in str(purpose.value)
    bad_chunk = box.request("POST", f"/v1/vector_stores/{corpus['store']}/files", {
        "file_id": corpus["files"]["tax.txt"],
        "chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 80}}})
    assert bad_chunk.status == 400
    assert _error(bad_chunk)["param"] == "chunking_strategy.static.chunk_overlap_tokens"
    bad_filter = box.request("POST", f"/v1/vector_stores/{corpus['store']}/search",
                             {"query": "x", "filters": {"type": "gt", "key": "year", "value": "soon"}})
    assert bad_filter.status == 400 and _error(bad_filter)["param"] == "filters.value"
    bad_k = box.request("POST", f"/v1/vector_stores/{corpus['store']}/search", {"query": "x", "max_num_results": 0})
    assert bad_k.status == 400 and _error(bad_k)["param"] == "max_num_results"
    assert len(client.vector_stores.files.list(vector_store_id=corpus["store"], limit=100).data) == before


def test_whitespace_file_fails_with_last_error_and_leaves_no_chunks(box: Gateway) -> None:
    client = box.client()
    blank = client.files.create(file=("blank.markdown", io.BytesIO(b"   \n\n  ")), purpose="assistants")
    vs = client.vector_stores.create(name="blank", file_ids=[blank.id])
    done = wait_until(lambda: (f := client.vector_stores.files.retrieve(vector_store_id=vs.id, file_id=blank.id))
                      .status != "in_progress" and f, 60, "the blank file to finish")
    assert done.status == "failed" and done.last_error is not None
    assert done.last_error.code == "invalid_file" and "no text" in done.last_error.message
    assert client.vector_stores.retrieve(vs.id).file_counts.failed == 1


def test_a_large_file_is_indexed_asynchronously_and_polled(box: Gateway) -> None:
    """The create answers before the ~190 chunks are embedded; the refusal of a search meanwhile (409) is
    tested deterministically in tests/test_vectors_service.py."""
    client = box.client()
    text = " ".join(f"Sentence number {i} talks about rivers and lakes." for i in range(3000))
    big = client.files.create(file=("big.txt", io.BytesIO(text.encode())), purpose="assistants")
    vs = client.vector_stores.create(name="busy", file_ids=[big.id])
    assert vs.status == "in_progress" and vs.file_counts.in_progress == 1
    done = poll_completed(client, vs.id)
    assert done.file_counts.completed == 1 and done.usage_bytes > len(text)  # overlapping chunks
    assert box.request("POST", f"/v1/vector_stores/{vs.id}/search", {"query": "rivers"}).status == 200


def _cli(box: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APPLIANCE_URL": box.url, "APPLIANCE_API_KEY": box.keys["user"], "PYTHONPATH": str(ROOT),
           "APPLIANCE_CONFIG": str(box.tmp / "config.toml")}
    return subprocess.run([sys.executable, "-m", "appliance", "vectors", *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=ROOT)


def test_cli_adds_a_directory_lists_and_searches(box: Gateway, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "whales.txt").write_text(CORPUS["whales.txt"][0])
    (docs / "sub" / "bikes.html").write_text(CORPUS["bikes.html"][0])
    (docs / "image.png").write_bytes(b"\x89PNG")
    (docs / "lighthouse.pdf").write_bytes(tiny_pdf("Lighthouses guide ships past the rocks at night"))
    added = _cli(box, "add", "cli-docs", str(docs), "--create")
    assert added.returncode == 0, added.stderr
    assert "3 indexed, 0 failed, 1 skipped" in added.stdout
    listed = _cli(box, "list")
    assert listed.returncode == 0 and "cli-docs" in listed.stdout, listed.stderr
    found = _cli(box, "search", "cli-docs", "What does the biggest creature in the ocean eat?", "-n", "1")
    assert found.returncode == 0 and "whales.txt" in found.stdout and "krill" in found.stdout, found.stderr
    pdf = _cli(box, "search", "cli-docs", "What warns sailors about dangerous rocks in the dark?", "-n", "1")
    assert pdf.returncode == 0 and "lighthouse.pdf" in pdf.stdout, pdf.stdout + pdf.stderr
    missing = _cli(box, "search", "no-such-store", "x")
    assert missing.returncode == 1 and "no vector store named 'no-such-store'" in missing.stderr


def test_reindex_rebuilds_a_store_from_its_kept_files(box: Gateway) -> None:
    client = box.client()
    f = client.files.create(file=("chess.txt", io.BytesIO(CORPUS["chess.txt"][0].encode())), purpose="assistants")
    vs = client.vector_stores.create(name="rebuild", file_ids=[f.id])
    poll_completed(client, vs.id)
    wrong = box.request("POST", f"/v1/vector_stores/{vs.id}/reindex", {"model": "other"})
    assert wrong.status == 400 and _error(wrong)["param"] == "model"
    done = _cli(box, "reindex", vs.id, "--model", "minilm")
    assert done.returncode == 0 and "1 file(s) re-embedded with minilm, 0 failed" in done.stdout, done.stderr
    hits = client.vector_stores.search(vector_store_id=vs.id, query=CORPUS["chess.txt"][1]).data
    assert hits and hits[0].file_id == f.id


def test_restart_loses_nothing_and_another_embedding_model_is_refused(box: Gateway, corpus: dict[str, Any]) -> None:
    client = box.client()
    before = client.vector_stores.search(vector_store_id=corpus["store"], query=CORPUS["coffee.txt"][1]).data
    box.stop()
    doc = config(box.vectors)  # type: ignore[attr-defined]
    keys = dict(box.keys)
    again = launch(box.tmp, doc)
    again.keys = keys
    try:
        client = again.client()
        vs = client.vector_stores.retrieve(corpus["store"])
        assert vs.status == "completed" and vs.file_counts.completed == len(CORPUS)
        assert vs.metadata == {"owner": "tests"}
        after = client.vector_stores.search(vector_store_id=corpus["store"], query=CORPUS["coffee.txt"][1]).data
        assert [(r.file_id, r.content[0].text) for r in after] == [(r.file_id, r.content[0].text) for r in before]
        assert client.files.content(corpus["files"]["chess.txt"]).read() == CORPUS["chess.txt"][0].encode()
    finally:
        again.stop()
    other = json.loads(json.dumps(doc))
    other["models"] = {"minilm-2": other["models"]["minilm"]}
    third = launch(box.tmp, other)
    third.keys = keys
    try:
        resp = third.request("POST", f"/v1/vector_stores/{corpus['store']}/search", {"query": "espresso"})
        assert resp.status == 409 and _error(resp)["code"] == "embedding_model_mismatch", resp.body
        assert "reindex" in _error(resp)["message"] and "minilm" in _error(resp)["message"]
    finally:
        third.stop()
