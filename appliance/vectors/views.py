"""OpenAI's JSON shapes for files, vector stores, their files, batches and lists, built from store rows.

Pure: a row (dict of the store's columns) in, the object a client reads out.
It must not read the store nor decide anything.
"""

from __future__ import annotations

import json
from typing import Any

STATUSES = ("in_progress", "completed", "failed", "cancelled")


def file(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": int(row["created"]),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}


def counts(attachments: list[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(STATUSES, 0)
    for a in attachments:
        out[a["status"]] = out.get(a["status"], 0) + 1
    out["total"] = len(attachments)
    return out


def expires_at(row: dict[str, Any]) -> float | None:
    """When a store expires: `days` after its last activity; None when it has no expiry policy."""
    if not row.get("expires_after"):
        return None
    return float(row["last_active"]) + int(json.loads(row["expires_after"])["days"]) * 86400


def vector_store(row: dict[str, Any], attachments: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """At or past `expires_at` the status is `expired`."""
    c = counts(attachments)
    policy = json.loads(row["expires_after"]) if row.get("expires_after") else None
    until = expires_at(row)
    status = ("expired" if until is not None and now >= until
              else "in_progress" if c["in_progress"] else "completed")
    return {"id": row["id"], "object": "vector_store", "created_at": int(row["created"]), "name": row["name"],
            "usage_bytes": sum(int(a["usage_bytes"]) for a in attachments), "file_counts": c,
            "status": status, "expires_after": policy,
            "expires_at": int(until) if until is not None else None,
            "last_active_at": int(row["last_active"]), "metadata": json.loads(row["metadata"]),
            # the appliance's own: what built the store (searching needs the same model)
            "embedding_model": row["embedding_model"], "embedding_dimension": row["dimension"],
            "description": row.get("description")}  # kept as given at create (OpenAI's object omits it)


def vector_store_file(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["file_id"], "object": "vector_store.file", "usage_bytes": row["usage_bytes"],
            "created_at": int(row["created"]), "vector_store_id": row["vector_store_id"], "status": row["status"],
            "last_error": json.loads(row["last_error"]) if row["last_error"] else None,
            "chunking_strategy": json.loads(row["chunking"]), "attributes": json.loads(row["attributes"])}


def batch(row: dict[str, Any], attachments: list[dict[str, Any]]) -> dict[str, Any]:
    """A cancelled batch reads `cancelling` while some of its files are still being stopped."""
    c = counts(attachments)
    if row.get("cancelled") is not None:
        status = "cancelling" if c["in_progress"] else "cancelled"
    else:
        status = "in_progress" if c["in_progress"] else ("failed" if c["failed"] and not c["completed"]
                                                           else "completed")
    return {"id": row["id"], "object": "vector_store.files_batch", "created_at": int(row["created"]),
            "vector_store_id": row["vector_store_id"], "status": status, "file_counts": c}


def file_content(texts: list[str]) -> dict[str, Any]:
    """A vector store file's parsed content: its chunks as text parts, on one page."""
    return {"object": "vector_store.file_content.page", "data": [{"type": "text", "text": t} for t in texts],
            "has_more": False, "next_page": None}


def deleted(obj_id: str, kind: str) -> dict[str, Any]:
    return {"id": obj_id, "object": kind, "deleted": True}


def page(items: list[dict[str, Any]], *, limit: int, order: str, after: str | None,
         before: str | None) -> dict[str, Any]:
    """OpenAI's cursor list over `items` (oldest first, each with an "id")."""
    ordered = items if order == "asc" else list(reversed(items))
    ids = [i["id"] for i in ordered]
    if after is not None and after in ids:
        ordered = ordered[ids.index(after) + 1:]
    if before is not None and before in ids:
        ordered = ordered[:[i["id"] for i in ordered].index(before)]
    data = ordered[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > limit}
