"""Admin routes over the key store, for the web UI: `GET /api/keys` (list), `POST /api/keys` (create:
the secret is in that one answer and nowhere else) and `POST /api/keys/{id}/revoke`.

Admin scope is checked by gateway.front like the rest of `/api`. After a change the gateway's key
cache (gateway.auth) is refreshed at once, so a new key works and a revoked one is refused from the
next request on this daemon (other boxes sharing the store notice within about a second).
It must not log, store or return a secret except in the creating answer, nor return any hash.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ..app import Appliance
from .auth import KeyCache
from .errors import ApiError, NotFound
from .keys import ApiKey, KeyStore

router = APIRouter()


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"\S")
    admin: bool = False


def _store(request: Request) -> KeyStore:
    appliance: Appliance = request.app.state.appliance
    return KeyStore(appliance.store)


async def _changed(request: Request) -> None:
    cache: KeyCache = request.app.state.key_cache
    await asyncio.to_thread(cache.refresh, True)


def _row(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "admin": key.admin, "created": key.created, "revoked": key.revoked,
            "imported": key.id.startswith("t")}


@router.get("/api/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    keys = await asyncio.to_thread(_store(request).list)
    return {"keys": [_row(k) for k in keys]}


@router.post("/api/keys", status_code=201)
async def create_key(request: Request, body: NewKey) -> dict[str, Any]:
    key, secret = await asyncio.to_thread(_store(request).create, body.name.strip(), body.admin)
    await _changed(request)
    return {**_row(key), "key": secret}


@router.post("/api/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    store = _store(request)
    known = {k.id: k for k in await asyncio.to_thread(store.list)}
    if key_id not in known:
        raise NotFound(f"no key with id {key_id!r}", param="key_id")
    if any(k.name == key_id and k.id != key_id for k in known.values()):
        # the store revokes by id or name: this would revoke another key named like this id too
        raise ApiError(f"another key is named {key_id!r}: revoke with `appliance keys revoke` by name instead",
                       status=409, code="ambiguous_key", param="key_id")
    await asyncio.to_thread(store.revoke, key_id)
    await _changed(request)
    revoked = next(k for k in await asyncio.to_thread(store.list) if k.id == key_id)
    return _row(revoked)
