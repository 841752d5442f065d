"""One protocol for the vector databases the appliance keeps chunks in, and the choice between them.

A collection per vector store (named by its id) holds chunks: an id, the vector, the file it came from
and its text. `open_backend` imports the selected client only when called (chromadb and pymilvus are
heavy: the daemon's start time and idle memory stay untouched until a vector route needs one);
`check` says at start, in one line, what would make the selected backend unusable, without importing it.
It must not know files, stores' records or the HTTP API (appliance.vectors.service does).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import Config


class VectorsError(Exception):
    """The vector database cannot be opened or used; one line naming it."""


@dataclass(frozen=True)
class Chunk:
    id: str
    file_id: str
    text: str
    vector: list[float]


@dataclass(frozen=True)
class Hit:
    id: str
    file_id: str
    text: str
    score: float  # cosine similarity, higher is closer


class VectorBackend(Protocol):
    name: str

    def describe(self) -> str: ...

    def add(self, collection: str, dimension: int, chunks: list[Chunk]) -> None:
        """Create the collection on first use (cosine metric), then insert."""
        ...

    def search(self, collection: str, vector: list[float], k: int, file_ids: list[str] | None) -> list[Hit]:
        """The `k` nearest chunks among those of `file_ids` (None: the whole collection), best first."""
        ...

    def texts(self, collection: str, ids: list[str]) -> list[str]:
        """The text of the chunks `ids`, in that order (an id not found is left out)."""
        ...

    def delete_file(self, collection: str, file_id: str) -> None: ...

    def count(self, collection: str) -> int: ...

    def drop(self, collection: str) -> None: ...

    def close(self) -> None: ...


def selected(config: Config) -> tuple[str, str]:
    """(backend, uri) after the profile's default: chroma in the state directory, or milvus in `full`."""
    vc = config.vectors
    backend = vc.backend or ("milvus" if config.profile == "full" else "chroma")
    uri = vc.uri or (str(config.state_path() / "data" / "chroma") if backend == "chroma" else "")
    return backend, uri


def check(config: Config) -> str | None:
    """What keeps the selected backend from opening (one line), or None; imports nothing."""
    backend, uri = selected(config)
    module, extra = ("chromadb", "appliance[vectors]") if backend == "chroma" else ("pymilvus", "appliance[full]")
    if importlib.util.find_spec(module) is None:
        return f"vectors.backend: {backend!r} needs the {module} package, which is not installed: pip install '{extra}'"
    if backend == "milvus" and not uri:
        return "vectors.uri: the milvus backend needs a server URI (http://host:19530) or a milvus-lite file path"
    return None


def open_backend(config: Config) -> VectorBackend:
    backend, uri = selected(config)
    problem = check(config)
    if problem:
        raise VectorsError(problem)
    if backend == "chroma":
        from .chroma import ChromaBackend

        return ChromaBackend(Path(uri).expanduser())
    from .milvus import MilvusBackend

    return MilvusBackend(uri)
