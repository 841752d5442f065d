"""The pure cores of retrieval: parsing files to text, chunking (in the embedding model's tokens), attribute
filters, list pages."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from appliance.vectors import chunking, filters, parsing, tokens, views


def test_chunks_overlap_by_the_static_strategy_and_cover_the_text() -> None:
    text = " ".join(f"w{i}" for i in range(250))
    strategy = chunking.parse_strategy({"type": "static",
                                        "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}})
    chunks = chunking.chunk(text, strategy, tokens.words)
    assert [len(c.split()) for c in chunks] == [100, 100, 90]
    assert chunks[0].split()[-20:] == chunks[1].split()[:20]  # the overlap
    assert chunks[-1].endswith("w249")
    assert chunking.chunk("   ", chunking.AUTO, tokens.words) == []
    assert chunking.parse_strategy(None) == chunking.parse_strategy({"type": "auto"}) == chunking.AUTO


def _minilm() -> tokens.Tokenizer:
    tok = tokens.for_model("all-MiniLM-L6-v2", Path("/nonexistent-state"))
    assert tok is not tokens.FALLBACK and tok.name.endswith("tokenizer.json"), tok.name
    return tok


def test_chunk_sizes_are_counted_in_the_embedding_models_word_pieces() -> None:
    """all-MiniLM-L6-v2's own tokenizer (packaged, no download): long words are several tokens, so a
    100-token chunk holds fewer than 100 words; every chunk but the last is exactly 100 tokens and
    consecutive chunks share exactly 20."""
    tok = _minilm()
    text = " ".join(f"Unbelievably {i} tokenization-heavy paragraphs." for i in range(120))
    strategy = chunking.Strategy(False, 100, 20)
    chunks = chunking.chunk(text, strategy, tok.spans)
    spans = tok.spans(text)
    assert len(spans) > 3 * len(text.split())  # word pieces, not words
    starts, pos = [], 0
    for c in chunks:  # where each chunk lies in the text
        at = text.index(c, pos)
        starts.append(at)
        pos = at + 1
    counts = [sum(1 for a, b in spans if s <= a and b <= s + len(c)) for s, c in zip(starts, chunks, strict=True)]
    assert counts[:-1] == [100] * (len(chunks) - 1) and 0 < counts[-1] <= 100, counts
    assert all(len(c.split()) < 100 for c in chunks)
    for (s1, c1), s2 in zip(zip(starts, chunks, strict=True), starts[1:], strict=False):
        shared = [sp for sp in spans if s2 <= sp[0] and sp[1] <= s1 + len(c1)]
        assert len(shared) == 20
    assert chunks[-1].endswith("paragraphs.") and chunks[0].startswith("Unbelievably 0")


def test_the_auto_strategy_is_openais_800_400_within_the_models_window() -> None:
    assert chunking.AUTO.view() == {"type": "static", "static": {"max_chunk_size_tokens": 800,
                                                                  "chunk_overlap_tokens": 400}}
    assert _minilm().window == 254  # max_seq_length 256, less [CLS] and [SEP]
    assert chunking.auto_for(254) == chunking.Strategy(True, 254, 127)
    assert chunking.auto_for(None) == chunking.auto_for(8192) == chunking.AUTO
    fallback = tokens.for_model("some/hub-model-not-on-disk", Path("/nonexistent-state"))
    assert fallback is tokens.FALLBACK and fallback.window is None
    assert fallback.spans("Hello, world") == [(0, 5), (5, 6), (7, 12)]


def test_a_pulled_models_tokenizer_is_found_in_the_state_directory(tmp_path: Path) -> None:
    packaged = tokens.model_dir("all-MiniLM-L6-v2", tmp_path)
    assert packaged is not None
    pulled = tmp_path / "models" / "my-embedder"
    pulled.mkdir(parents=True)
    (pulled / "tokenizer.json").write_bytes((packaged / "tokenizer.json").read_bytes())
    (pulled / "sentence_bert_config.json").write_text('{"max_seq_length": 512}')
    tok = tokens.for_model("my-embedder", tmp_path)
    assert tok.window == 510 and str(pulled) in tok.name


def test_a_hub_models_tokenizer_is_read_from_the_hugging_face_cache(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    packaged = tokens.model_dir("all-MiniLM-L6-v2", tmp_path)
    assert packaged is not None
    repo = tmp_path / "hub" / "models--acme--embedder"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "tokenizer.json").write_bytes((packaged / "tokenizer.json").read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert tokens.model_dir("acme/embedder", tmp_path) == snapshot
    assert tokens.for_model("acme/embedder", tmp_path).spans("Hi there") == [(0, 2), (3, 8)]
    assert tokens.model_dir("acme/not-cached", tmp_path) is None


@pytest.mark.parametrize(("value", "param"), [
    ({"type": "fixed"}, "chunking_strategy.type"),
    ({"type": "static"}, "chunking_strategy.static"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0}},
     "chunking_strategy.static.max_chunk_size_tokens"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 101}},
     "chunking_strategy.static.chunk_overlap_tokens"),
])
def test_bad_chunking_strategies_name_the_field(value: object, param: str) -> None:
    with pytest.raises(chunking.ChunkingError) as err:
        chunking.parse_strategy(value)
    assert err.value.param == param


def test_html_text_skips_scripts_and_styles() -> None:
    html = b"<html><head><title>t</title><style>.x{}</style></head><body><p>Hello &amp; welcome</p>" \
           b"<script>alert(1)</script><div>second</div></body></html>"
    text = parsing.extract("page.html", html)
    assert "Hello & welcome" in text and "second" in text and "alert" not in text and ".x" not in text


def test_pdf_text_is_extracted_with_pypdf() -> None:
    pdf = tiny_pdf("Lighthouses guide ships")
    assert "Lighthouses guide ships" in parsing.extract("doc.pdf", pdf)
    with pytest.raises(parsing.ParseError):
        parsing.extract("broken.pdf", b"%PDF-1.4 not really")


def test_unsupported_and_empty_files_are_refused() -> None:
    with pytest.raises(parsing.Unsupported) as unsupported:
        parsing.extract("tool.exe", b"MZ")
    assert unsupported.value.code == "unsupported_file" and ".pdf" in str(unsupported.value)
    with pytest.raises(parsing.Empty):
        parsing.extract("blank.markdown", b" \n ")
    with pytest.raises(parsing.ParseError, match="UTF-8"):
        parsing.extract("latin.txt", b"caf\xe9")


def test_filters_comparison_compound_and_missing_keys() -> None:
    attrs = {"topic": "food", "year": 2020, "draft": False}
    ok = filters.parse({"type": "and", "filters": [
        {"type": "eq", "key": "topic", "value": "food"},
        {"type": "or", "filters": [{"type": "gt", "key": "year", "value": 2021},
                                   {"type": "in", "key": "topic", "value": ["food", "tech"]}]}]})
    assert filters.matches(ok, attrs)
    assert not filters.matches(filters.parse({"type": "lte", "key": "year", "value": 2019}), attrs)
    assert filters.matches(filters.parse({"type": "ne", "key": "draft", "value": True}), attrs)
    assert not filters.matches(filters.parse({"type": "ne", "key": "absent", "value": 1}), attrs)
    assert filters.matches(filters.parse({"type": "nin", "key": "topic", "value": ["tech"]}), attrs)


@pytest.mark.parametrize(("value", "param"), [
    ({"type": "like", "key": "a", "value": 1}, "filters.type"),
    ({"type": "eq", "value": 1}, "filters.key"),
    ({"type": "gt", "key": "a", "value": "x"}, "filters.value"),
    ({"type": "in", "key": "a", "value": 1}, "filters.value"),
    ({"type": "or", "filters": []}, "filters.filters"),
    ({"type": "and", "filters": [{"type": "eq", "key": "a", "value": {}}]}, "filters.filters[0].value"),
])
def test_bad_filters_name_the_field(value: object, param: str) -> None:
    with pytest.raises(filters.FilterError) as err:
        filters.parse(value)
    assert err.value.param == param


def test_attributes_follow_openais_limits() -> None:
    assert filters.check_attributes({"a": "x", "n": 1.5, "b": True}) == {"a": "x", "n": 1.5, "b": True}
    with pytest.raises(filters.FilterError):
        filters.check_attributes({f"k{i}": i for i in range(17)})
    with pytest.raises(filters.FilterError) as err:
        filters.check_attributes({"a": [1]})
    assert err.value.param == "attributes.a"


def test_pages_follow_cursors() -> None:
    items = [{"id": f"i{n}"} for n in range(5)]
    first = views.page(items, limit=2, order="asc", after=None, before=None)
    assert [i["id"] for i in first["data"]] == ["i0", "i1"] and first["has_more"]
    rest = views.page(items, limit=10, order="asc", after=first["last_id"], before=None)
    assert [i["id"] for i in rest["data"]] == ["i2", "i3", "i4"] and not rest["has_more"]
    newest = views.page(items, limit=1, order="desc", after=None, before=None)
    assert newest["first_id"] == "i4"


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica, written by hand (offsets computed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % n + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref))
    return out.getvalue()
