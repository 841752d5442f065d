"""`/v1/files` and `/v1/vector_stores`: OpenAI's routes for uploads, vector stores, their files and file
batches, and search, with OpenAI's shapes, list cursors and errors.

A file and a vector store are visible to the key that made them and to admin keys (404 to anyone else),
like a job. Bodies are checked here (each refusal names its field); the work is `service.Retrieval`'s.
It must not index, search or keep state itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from ..gateway.errors import ApiError, InvalidRequest, MethodNotAllowed, NotFound, internal_error
from ..gateway.exchange import Exchange
from ..gateway.keys import ApiKey
from . import chunking, filters, views
from .service import Retrieval, RetrievalError

log = logging.getLogger("appliance.vectors")
FILES, STORES = "/v1/files", "/v1/vector_stores"
PURPOSES = ("assistants", "user_data")
MAX_RESULTS = 50


def owns(path: str) -> bool:
    return path in (FILES, STORES) or path.startswith((FILES + "/", STORES + "/"))


def _bad(param: str, message: str, code: str | None = None) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param, code=code)


def _api_error(err: RetrievalError) -> ApiError:
    if err.status == 404:
        return NotFound(str(err), param=err.param, code=err.code)
    if err.status == 400:
        return InvalidRequest(str(err), param=err.param, code=err.code)
    out = ApiError(str(err), param=err.param, code=err.code, status=err.status)
    out.type = "invalid_request_error" if err.status < 500 else "server_error"
    return out


class RetrievalApi:
    def __init__(self, service: Retrieval, max_body: int) -> None:
        self.service = service
        self.max_body = max_body
        self.max_file = service.config.vectors.max_file_bytes

    async def handle(self, ex: Exchange, key: ApiKey | None) -> None:
        try:
            await self._dispatch(ex, key)
        except RetrievalError as err:
            await ex.fail(_api_error(err))
        except ApiError as err:
            await ex.fail(err)
        except Exception:  # a bug or a vector database that failed: the envelope and a request id, the trace logged
            await ex.fail(internal_error(log, ex.scope["path"]))

    async def _dispatch(self, ex: Exchange, key: ApiKey | None) -> None:
        path: str = ex.scope["path"]
        method: str = ex.scope["method"]
        if method == "HEAD":
            method = "GET"
        if path == FILES or path.startswith(FILES + "/"):
            parts = [p for p in path[len(FILES):].split("/") if p]
            return await self._files(ex, key, method, parts)
        parts = [p for p in path[len(STORES):].split("/") if p]
        return await self._stores(ex, key, method, parts)

    # -- /v1/files
    async def _files(self, ex: Exchange, key: ApiKey | None, method: str, parts: list[str]) -> None:
        if not parts:
            if method == "POST":
                return await self._upload(ex, key)
            if method == "GET":
                q = self._query(ex)
                purpose = q.get("purpose")
                rows = await self.service.files(key, purpose)
                return await self._list(ex, [views.file(r) for r in rows], q, default_limit=10000)
            raise MethodNotAllowed(f"{FILES} accepts GET and POST, not {method}")
        if len(parts) == 2 and parts[1] == "content" and method == "GET":
            row, data = await self.service.content(key, parts[0])
            return await ex.respond(200, data, b"application/octet-stream", [
                (b"content-disposition", f'attachment; filename="{_header_safe(row["filename"])}"'.encode())])
        if len(parts) != 1:
            raise NotFound(f"no route {method} {ex.scope['path']}")
        if method == "GET":
            return await self._send(ex, views.file(await self.service.file(key, parts[0])))
        if method == "DELETE":
            await self.service.delete_file(key, parts[0])
            return await self._send(ex, views.deleted(parts[0], "file"))
        raise MethodNotAllowed(f"{FILES}/{{file_id}} accepts GET and DELETE, not {method}")

    async def _upload(self, ex: Exchange, key: ApiKey | None) -> None:
        ctype = (ex.header(b"content-type") or b"").decode("latin-1")
        if not ctype.lower().startswith("multipart/form-data"):
            raise _bad("file", "upload a file as multipart/form-data with the fields file and purpose")
        raw = await ex.read_body(self.max_file + 64 * 1024)
        fields = _form(ctype, raw)
        purpose = fields.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise _bad("purpose", "is required")
        if purpose not in PURPOSES:
            raise _bad("purpose", f"must be one of {', '.join(PURPOSES)} on this appliance (got {purpose!r})")
        upload = fields.get("file")
        if not isinstance(upload, tuple):
            raise _bad("file", "is required: a file part with a filename")
        filename, data = upload
        if len(data) > self.max_file:
            raise ApiError(f"file: {len(data)} bytes is more than vectors.max_file_bytes ({self.max_file})",
                           param="file", code="file_too_large", status=413)
        row = await self.service.upload(key, filename, purpose, data)
        await self._send(ex, views.file(row))

    # -- /v1/vector_stores
    async def _stores(self, ex: Exchange, key: ApiKey | None, method: str, parts: list[str]) -> None:
        if not parts:
            if method == "POST":
                return await self._create_store(ex, key)
            if method == "GET":
                rows = await self.service.vector_stores(key)
                now = self.service.clock()
                out = [views.vector_store(r, await self.service.attachments(r["id"]), now) for r in rows]
                return await self._list(ex, out, self._query(ex))
            raise MethodNotAllowed(f"{STORES} accepts GET and POST, not {method}")
        row = await self.service.vector_store(key, parts[0])
        sub = parts[1:]
        if not sub:
            if method == "GET":
                return await self._send_store(ex, row)
            if method == "POST":
                return await self._modify_store(ex, row)
            if method == "DELETE":
                await self.service.delete_store(row)
                return await self._send(ex, views.deleted(row["id"], "vector_store.deleted"))
            raise MethodNotAllowed(f"{STORES}/{{id}} accepts GET, POST and DELETE, not {method}")
        if sub == ["search"]:
            if method != "POST":
                raise MethodNotAllowed(f"{STORES}/{{id}}/search accepts POST, not {method}")
            return await self._search(ex, key, row)
        if sub == ["reindex"]:
            if method != "POST":
                raise MethodNotAllowed(f"{STORES}/{{id}}/reindex accepts POST, not {method}")
            body = await self._body(ex)
            _only(body, {"model"})
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise _bad("model", "is required: the embedding model to rebuild the store with")
            return await self._send_store(ex, await self.service.reindex(key, row, model))
        if sub[0] == "files":
            return await self._store_files(ex, key, method, row, sub[1:])
        if sub[0] == "file_batches":
            return await self._batches(ex, key, method, row, sub[1:])
        raise NotFound(f"no route {method} {ex.scope['path']}")

    async def _create_store(self, ex: Exchange, key: ApiKey | None) -> None:
        body = await self._body(ex)
        _only(body, {"name", "file_ids", "metadata", "chunking_strategy", "expires_after", "description"})
        expires = _expires_after(body.get("expires_after"))
        name = _opt_str(body, "name")
        file_ids = body.get("file_ids", [])
        if not isinstance(file_ids, list):
            raise _bad("file_ids", "must be an array of file ids")
        if len(set(map(str, file_ids))) != len(file_ids):
            raise _bad("file_ids", "lists a file more than once")
        strategy = _strategy(body.get("chunking_strategy"))
        row = await self.service.create_store(key, name, _metadata(body.get("metadata")), file_ids, strategy,
                                              expires, _opt_str(body, "description"))
        await self._send_store(ex, row)

    async def _modify_store(self, ex: Exchange, row: dict[str, Any]) -> None:
        body = await self._body(ex)
        _only(body, {"name", "metadata", "expires_after"})
        fields: dict[str, Any] = {}
        if "expires_after" in body:  # null: the store no longer expires
            expires = _expires_after(body["expires_after"])
            fields["expires_after"] = json.dumps(expires) if expires else None
        if "name" in body:
            fields["name"] = _opt_str(body, "name")
        if "metadata" in body:
            fields["metadata"] = json.dumps(_metadata(body["metadata"]))
        if fields:
            row = await self.service.modify_store(row, fields)
        await self._send_store(ex, row)

    async def _store_files(self, ex: Exchange, key: ApiKey | None, method: str, row: dict[str, Any],
                           rest: list[str]) -> None:
        if not rest:
            if method == "POST":
                body = await self._body(ex)
                _only(body, {"file_id", "attributes", "chunking_strategy"})
                file_id = body.get("file_id")
                if not isinstance(file_id, str) or not file_id:
                    raise _bad("file_id", "is required")
                await self.service.attach(key, row, [file_id], _attributes(body.get("attributes")),
                                          _strategy(body.get("chunking_strategy")), False, "file_id")
                return await self._send_attachment(ex, row["id"], file_id)
            if method == "GET":
                q = self._query(ex)
                status = _status_filter(q)
                rows = await self.service.attachments(row["id"], status=status)
                return await self._list(ex, [views.vector_store_file(a) for a in rows], q)
            raise MethodNotAllowed(f"{STORES}/{{id}}/files accepts GET and POST, not {method}")
        if len(rest) == 2 and rest[1] == "content":
            if method != "GET":
                raise MethodNotAllowed(f"{STORES}/{{id}}/files/{{file_id}}/content accepts GET, not {method}")
            return await self._send(ex, views.file_content(await self.service.file_content(row, rest[0])))
        if len(rest) != 1:
            raise NotFound(f"no route {method} {ex.scope['path']}")
        file_id = rest[0]
        if method == "GET":
            return await self._send_attachment(ex, row["id"], file_id)
        if method == "POST":
            body = await self._body(ex)
            _only(body, {"attributes"})
            if "attributes" not in body:
                raise _bad("attributes", "is required")
            await self._attachment(row["id"], file_id)
            await _to_thread_update(self.service, row["id"], file_id,
                                    {"attributes": json.dumps(_attributes(body["attributes"]))})
            return await self._send_attachment(ex, row["id"], file_id)
        if method == "DELETE":
            await self.service.detach(row, file_id)
            return await self._send(ex, views.deleted(file_id, "vector_store.file.deleted"))
        raise MethodNotAllowed(f"{STORES}/{{id}}/files/{{file_id}} accepts GET, POST and DELETE, not {method}")

    async def _batches(self, ex: Exchange, key: ApiKey | None, method: str, row: dict[str, Any],
                       rest: list[str]) -> None:
        if not rest:
            if method != "POST":
                raise MethodNotAllowed(f"{STORES}/{{id}}/file_batches accepts POST, not {method}")
            body = await self._body(ex)
            _only(body, {"file_ids", "attributes", "chunking_strategy"})
            file_ids = body.get("file_ids")
            if not isinstance(file_ids, list) or not file_ids:
                raise _bad("file_ids", "is required: a non-empty array of file ids")
            if len(set(map(str, file_ids))) != len(file_ids):
                raise _bad("file_ids", "lists a file more than once")
            batch_id = await self.service.attach(key, row, file_ids, _attributes(body.get("attributes")),
                                                 _strategy(body.get("chunking_strategy")), True, "file_ids")
            assert batch_id is not None
            return await self._send_batch(ex, row["id"], batch_id)
        batch_id, tail = rest[0], rest[1:]
        if tail == [] and method == "GET":
            return await self._send_batch(ex, row["id"], batch_id)
        if tail == ["files"] and method == "GET":
            await self._batch(row["id"], batch_id)
            q = self._query(ex)
            rows = await self.service.attachments(row["id"], batch_id=batch_id, status=_status_filter(q))
            return await self._list(ex, [views.vector_store_file(a) for a in rows], q)
        if tail == ["cancel"] and method == "POST":
            await self.service.cancel_batch(row, await self._batch(row["id"], batch_id))
            return await self._send_batch(ex, row["id"], batch_id)
        raise NotFound(f"no route {method} {ex.scope['path']}")

    async def _search(self, ex: Exchange, key: ApiKey | None, row: dict[str, Any]) -> None:
        body = await self._body(ex)
        _only(body, {"query", "max_num_results", "filters", "ranking_options", "rewrite_query"})
        query = body.get("query")
        queries = [query] if isinstance(query, str) else query
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q.strip()
                                                                   for q in queries):
            raise _bad("query", "is required: a non-empty string or array of strings")
        k = body.get("max_num_results", 10)
        if type(k) is not int or not 1 <= k <= MAX_RESULTS:
            raise _bad("max_num_results", f"must be an integer from 1 to {MAX_RESULTS}")
        if body.get("rewrite_query"):
            raise _bad("rewrite_query", "is not supported on the appliance", code="unsupported_parameter")
        flt = None
        if body.get("filters") is not None:
            try:
                flt = filters.parse(body["filters"])
            except filters.FilterError as exc:
                raise _bad(exc.param, str(exc).split(": ", 1)[1]) from None
        threshold = 0.0
        ranking = body.get("ranking_options")
        if ranking is not None:
            if not isinstance(ranking, dict) or set(ranking) - {"ranker", "score_threshold"}:
                raise _bad("ranking_options", "takes ranker and score_threshold")
            if ranking.get("ranker", "auto") not in ("auto", "default-2024-11-15", "none"):
                raise _bad("ranking_options.ranker", "must be auto, default-2024-11-15 or none")
            threshold = ranking.get("score_threshold", 0.0)
            if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
                raise _bad("ranking_options.score_threshold", "must be a number from 0 to 1")
        hits = await self.service.search(key, row, queries, k, flt, float(threshold))
        data = [{"file_id": h.file_id, "filename": h.filename, "score": h.score, "attributes": h.attributes,
                 "content": [{"type": "text", "text": h.text}]} for h in hits]
        await self._send(ex, {"object": "vector_store.search_results.page", "search_query": queries,
                              "data": data, "has_more": False, "next_page": None})

    # -- helpers
    async def _attachment(self, store_id: str, file_id: str) -> dict[str, Any]:
        rows = await self.service.attachments(store_id, file_id=file_id)
        if not rows:
            raise NotFound(f"file {file_id!r} is not attached to vector store {store_id}", param="file_id",
                           code="file_not_found")
        return rows[0]

    async def _batch(self, store_id: str, batch_id: str) -> dict[str, Any]:
        batch = await asyncio.to_thread(self.service.store.batch_get, batch_id)
        if batch is None or batch["vector_store_id"] != store_id:
            raise NotFound(f"no file batch {batch_id!r} in vector store {store_id}", param="batch_id",
                           code="batch_not_found")
        return batch

    async def _send_store(self, ex: Exchange, row: dict[str, Any]) -> None:
        await self._send(ex, views.vector_store(row, await self.service.attachments(row["id"]), self.service.clock()))

    async def _send_attachment(self, ex: Exchange, store_id: str, file_id: str) -> None:
        await self._send(ex, views.vector_store_file(await self._attachment(store_id, file_id)))

    async def _send_batch(self, ex: Exchange, store_id: str, batch_id: str) -> None:
        batch = await self._batch(store_id, batch_id)
        await self._send(ex, views.batch(batch, await self.service.attachments(store_id, batch_id=batch_id)))

    async def _list(self, ex: Exchange, items: list[dict[str, Any]], q: dict[str, str],
                    default_limit: int = 20) -> None:
        limit_s = q.get("limit", str(default_limit))
        if not limit_s.isdigit() or not 1 <= int(limit_s) <= max(100, default_limit):
            raise _bad("limit", f"must be an integer from 1 to {max(100, default_limit)}")
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _bad("order", "must be asc or desc")
        await self._send(ex, views.page(items, limit=int(limit_s), order=order, after=q.get("after"),
                                        before=q.get("before")))

    @staticmethod
    def _query(ex: Exchange) -> dict[str, str]:
        qs = parse_qs(ex.scope.get("query_string", b"").decode("latin-1"))
        return {k: v[-1] for k, v in qs.items()}

    async def _body(self, ex: Exchange) -> dict[str, Any]:
        raw = await ex.read_body(self.max_body)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            raise InvalidRequest("the body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        return body

    @staticmethod
    async def _send(ex: Exchange, doc: dict[str, Any]) -> None:
        await ex.respond(200, json.dumps(doc).encode())


async def _to_thread_update(service: Retrieval, store_id: str, file_id: str, fields: dict[str, Any]) -> None:
    await asyncio.to_thread(service.store.attach_update, store_id, file_id, fields)


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise _bad(extra[0], f"unknown parameter (accepted: {', '.join(sorted(allowed))})",
                   code="unknown_parameter")


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(name, "must be a string")
    return value


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if (not isinstance(value, dict) or len(value) > 16
            or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                       for k, v in value.items())):
        raise _bad("metadata", "must be an object of at most 16 string keys (64 chars) and string values (512)")
    return dict(value)


def _expires_after(value: object) -> dict[str, Any] | None:
    """OpenAI's expiry policy: {"anchor": "last_active_at", "days": 1..365}; None: no expiry."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"anchor", "days"}:
        raise _bad("expires_after", 'must be {"anchor": "last_active_at", "days": N}')
    if value["anchor"] != "last_active_at":
        raise _bad("expires_after.anchor", 'must be "last_active_at"')
    if type(value["days"]) is not int or not 1 <= value["days"] <= 365:
        raise _bad("expires_after.days", "must be an integer from 1 to 365")
    return {"anchor": "last_active_at", "days": value["days"]}


def _attributes(value: object) -> dict[str, Any]:
    try:
        return filters.check_attributes(value)
    except filters.FilterError as exc:
        raise _bad(exc.param, str(exc).split(": ", 1)[1]) from None


def _strategy(value: object) -> chunking.Strategy:
    try:
        return chunking.parse_strategy(value)
    except chunking.ChunkingError as exc:
        raise _bad(exc.param, str(exc).split(": ", 1)[1]) from None


def _status_filter(q: dict[str, str]) -> str | None:
    status = q.get("filter")
    if status is not None and status not in views.STATUSES:
        raise _bad("filter", f"must be one of {', '.join(views.STATUSES)}")
    return status


def _header_safe(name: str) -> str:
    return "".join(c for c in name if c.isprintable() and c not in '"\\\r\n')[:200]


def _form(ctype: str, raw: bytes) -> dict[str, str | tuple[str, bytes]]:
    """The fields of a multipart/form-data body: text fields as str, file parts as (filename, bytes)."""
    from email.message import Message
    from email.parser import BytesParser  # the standard library's MIME parser, loaded at the first upload
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw)
    if not msg.is_multipart():
        raise _bad("file", "the multipart body cannot be read (boundary missing or malformed)")
    out: dict[str, str | tuple[str, bytes]] = {}
    for part in msg.get_payload():
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        decoded = part.get_payload(decode=True)
        payload = decoded if isinstance(decoded, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            out[name] = (str(filename).replace("\\", "/").rsplit("/", 1)[-1] or "upload", payload)
        else:
            out[name] = payload.decode("utf-8", "replace")
    return out
