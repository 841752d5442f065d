"""Text out of an uploaded file: plain text, Markdown, HTML (stdlib html.parser) and PDF (pypdf).

The kind is chosen by the file name's extension; anything else is `Unsupported`, a file with no text
in it is `Empty`. Pure: bytes in, text out (pypdf is imported only for a PDF).
It must not chunk, embed or store.
"""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import PurePath

TEXT_EXT = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".json", ".log"})
HTML_EXT = frozenset({".html", ".htm"})
PDF_EXT = frozenset({".pdf"})
SUPPORTED = sorted(TEXT_EXT | HTML_EXT | PDF_EXT)


class ParseError(Exception):
    code = "invalid_file"


class Unsupported(ParseError):
    code = "unsupported_file"


class Empty(ParseError):
    code = "invalid_file"


def supported(filename: str) -> bool:
    return PurePath(filename).suffix.lower() in TEXT_EXT | HTML_EXT | PDF_EXT


class _HtmlText(HTMLParser):
    SKIP = frozenset({"script", "style", "head", "noscript", "template"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
                       "pre", "blockquote", "table", "ul", "ol", "header", "footer"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ParseError("the file is not UTF-8 text") from None


def extract(filename: str, data: bytes) -> str:
    ext = PurePath(filename).suffix.lower()
    if ext in TEXT_EXT:
        text = _decode(data)
    elif ext in HTML_EXT:
        parser = _HtmlText()
        parser.feed(_decode(data))
        parser.close()
        text = "".join(parser.parts)
    elif ext in PDF_EXT:
        text = _pdf(data)
    else:
        raise Unsupported(f"{filename!r}: unsupported file type {ext or '(no extension)'!r}; "
                          f"supported: {', '.join(SUPPORTED)}")
    if not text.strip():
        raise Empty(f"{filename!r} contains no text")
    return text


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PyPdfError, ValueError, KeyError, OSError) as exc:
        raise ParseError(f"the PDF cannot be read: {exc}") from None
