"""`appliance vectors list|add|search|reindex`: the vector stores of the running daemon, from the terminal.

Everything goes through the daemon's API (found and authenticated like every CLI command, see
appliance.daemon_client): an embedded Chroma directory has no lock between processes, so the daemon is
the only process that opens it. `add` uploads a directory's supported files, attaches them as one
batch and shows a progress bar until they are indexed; `reindex` rebuilds a store with another model.
It must not open the store or the vector database itself.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from .cli_config import daemon_target
from .daemon_client import DaemonError, DaemonTarget, DaemonUnreachable, request_json
from .vectors.parsing import supported

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="List, fill, search and rebuild the daemon's vector stores (/v1/vector_stores).")
POLL_S = 0.5


def _call(target: DaemonTarget, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
          ctype: str = "application/json", timeout_s: float = 120.0) -> Any:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return request_json(target, path, method, timeout_s, data=data, ctype=ctype)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _store_id(target: DaemonTarget, name_or_id: str) -> str:
    """A store id, or the id of the newest store with that name."""
    if name_or_id.startswith("vs_"):
        return name_or_id
    stores = _call(target, "GET", "/v1/vector_stores?limit=100")["data"]
    match = [s for s in stores if s.get("name") == name_or_id]
    if not match:
        raise DaemonError(target.base, 404, f"no vector store named {name_or_id!r}")
    return str(match[0]["id"])


def _multipart(path: Path, purpose: str) -> tuple[bytes, str]:
    boundary = "appliance" + secrets.token_hex(12)
    name = path.name.replace('"', "")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _wait(target: DaemonTarget, store_id: str, path: str, total: int, what: str) -> dict[str, Any]:
    """Poll `path` (a batch or the store) with a progress bar until nothing is in progress."""
    from rich.console import Console  # imported here: every CLI command, `serve` included, loads this module
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=total)
        while True:
            doc: dict[str, Any] = _call(target, "GET", path)
            counts = doc["file_counts"]
            bar.update(task, completed=counts["completed"] + counts["failed"] + counts["cancelled"])
            if counts["in_progress"] == 0:
                return doc
            time.sleep(POLL_S)


@app.command("list")
def list_stores() -> None:
    """The vector stores this key sees, with their file counts and embedding model."""
    target = daemon_target()
    try:
        stores = _call(target, "GET", "/v1/vector_stores?limit=100&order=asc")["data"]
    except (DaemonError, DaemonUnreachable) as exc:
        raise _fail(exc) from None
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "status", "files", "failed", "bytes", "model")
    for s in stores:
        c = s["file_counts"]
        table.add_row(s["id"], s.get("name") or "", s["status"], str(c["total"]), str(c["failed"]),
                      str(s["usage_bytes"]), s.get("embedding_model") or "")
    Console().print(table)


@app.command()
def add(store: Annotated[str, typer.Argument(help="a store id (vs_...) or name")],
        directory: Annotated[Path, typer.Argument(help="the files to add (searched recursively)")],
        create: Annotated[bool, typer.Option("--create", help="create the store (named STORE) if missing")] = False,
        purpose: Annotated[str, typer.Option(help="the files' purpose")] = "assistants") -> None:
    """Upload a directory's supported files (text, Markdown, HTML, PDF) and index them into a store."""
    if not directory.is_dir():
        raise _fail(Exception(f"{directory}: not a directory"))
    files = sorted(p for p in directory.rglob("*") if p.is_file() and supported(p.name) and p.stat().st_size)
    skipped = sum(1 for p in directory.rglob("*") if p.is_file()) - len(files)
    if not files:
        raise _fail(Exception(f"{directory}: no supported non-empty file (.txt, .md, .html, .pdf, ...)"))
    target = daemon_target()
    try:
        try:
            store_id = _store_id(target, store)
        except DaemonError as exc:
            if not (create and exc.status == 404 and not store.startswith("vs_")):
                raise
            store_id = _call(target, "POST", "/v1/vector_stores", {"name": store})["id"]
        ids = []
        for path in files:
            raw, ctype = _multipart(path, purpose)
            ids.append(_call(target, "POST", "/v1/files", raw=raw, ctype=ctype)["id"])
        batch = _call(target, "POST", f"/v1/vector_stores/{quote(store_id)}/file_batches", {"file_ids": ids})
        done = _wait(target, store_id, f"/v1/vector_stores/{quote(store_id)}/file_batches/{batch['id']}",
                     len(ids), f"indexing {len(ids)} file(s)")
    except (DaemonError, DaemonUnreachable) as exc:
        raise _fail(exc) from None
    counts = done["file_counts"]
    typer.echo(f"{store_id}: {counts['completed']} indexed, {counts['failed']} failed"
               + (f", {skipped} skipped (unsupported or empty)" if skipped else ""))
    if counts["failed"]:
        failed = _call(target, "GET", f"/v1/vector_stores/{quote(store_id)}/file_batches/{batch['id']}/files"
                                      "?filter=failed&limit=100")["data"]
        for f in failed:
            typer.echo(f"  failed {f['id']}: {f['last_error']['message']}", err=True)
        raise typer.Exit(1)


@app.command()
def search(store: Annotated[str, typer.Argument(help="a store id (vs_...) or name")],
           query: Annotated[str, typer.Argument(help="what to look for")],
           limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=50)] = 5,
           as_json: Annotated[bool, typer.Option("--json", help="print the API's answer")] = False) -> None:
    """Search a store and print the best chunks with their score and file."""
    target = daemon_target()
    try:
        store_id = _store_id(target, store)
        page = _call(target, "POST", f"/v1/vector_stores/{quote(store_id)}/search",
                     {"query": query, "max_num_results": limit})
    except (DaemonError, DaemonUnreachable) as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    for hit in page["data"]:
        text = " ".join(hit["content"][0]["text"].split())
        typer.echo(f"{hit['score']:.3f}  {hit['filename']} ({hit['file_id']})\n       {text[:300]}")
    if not page["data"]:
        typer.echo("no result")


@app.command()
def reindex(store: Annotated[str, typer.Argument(help="a store id (vs_...) or name")],
            model: Annotated[str, typer.Option("--model", help="the embedding model (vectors.embedding_model)")]
            ) -> None:
    """Rebuild a store with the configured embedding model (after vectors.embedding_model changed)."""
    target = daemon_target()
    try:
        store_id = _store_id(target, store)
        doc = _call(target, "POST", f"/v1/vector_stores/{quote(store_id)}/reindex", {"model": model})
        done = _wait(target, store_id, f"/v1/vector_stores/{quote(store_id)}", doc["file_counts"]["total"],
                     f"re-embedding with {model}")
    except (DaemonError, DaemonUnreachable) as exc:
        raise _fail(exc) from None
    typer.echo(f"{store_id}: {done['file_counts']['completed']} file(s) re-embedded with {model}, "
               f"{done['file_counts']['failed']} failed")
