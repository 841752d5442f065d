"""The pure cores of retrieval: parsing files to text, chunking, attribute filters, list pages."""

from __future__ import annotations

import io

import pytest

from appliance.vectors import chunking, filters, parsing, views


def test_chunks_overlap_by_the_static_strategy_and_cover_the_text() -> None:
    text = " ".join(f"w{i}" for i in range(250))
    strategy = chunking.parse_strategy({"type": "static",
                                        "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}})
    chunks = chunking.chunk(text, strategy)
    assert [len(c.split()) for c in chunks] == [100, 100, 90]
    assert chunks[0].split()[-20:] == chunks[1].split()[:20]  # the overlap
    assert chunks[-1].endswith("w249")
    assert chunking.chunk("   ", chunking.AUTO) == []
    assert chunking.parse_strategy(None) == chunking.parse_strategy({"type": "auto"}) == chunking.AUTO


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
