"""API keys: created once and shown once, stored only as SHA-256 hashes, revocable.

A key reads `sk-app-<id>-<secret>`: the id finds the row without scanning, the secret's hash is then
compared in constant time (hmac.compare_digest). High-entropy secrets make a plain hash safe here.
The rows live in the appliance's store (`appliance.store`: the `keys` table); a `keys.db` left by an
older version is taken over on the first start (`store.import_legacy`).
It must not log or persist a secret: only its hash leaves `create`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ..store import KeyRow, Store

PREFIX = "sk-app-"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    created: float
    revoked: float | None


def split_key(presented: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not presented.startswith(PREFIX):
        return None
    key_id, _, secret = presented[len(PREFIX):].partition("-")
    return (key_id, secret) if key_id and secret else None


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(row: KeyRow) -> ApiKey:
    return ApiKey(row.id, row.name, row.admin, row.created, row.revoked)


class KeyStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, admin: bool = False) -> tuple[ApiKey, str]:
        if not name.strip():
            raise ValueError("name: must not be empty")
        key_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(24)
        row = KeyRow(key_id, name, admin, secret_hash(secret), time.time(), None)
        self.store.key_insert(row)
        return _key(row), f"{PREFIX}{key_id}-{secret}"

    def list(self) -> list[ApiKey]:
        return [_key(r) for r in self.store.key_rows()]

    def revoke(self, key_id_or_name: str) -> int:
        return self.store.key_revoke(key_id_or_name, time.time())

    def snapshot(self) -> dict[str, tuple[ApiKey, str]]:
        """Every key by id with its stored hash: the daemon's in-memory copy (see gateway.auth)."""
        return {r.id: (_key(r), r.hash) for r in self.store.key_rows()}

    def fingerprint(self) -> tuple[object, ...]:
        """Changes when a key is added or revoked."""
        return self.store.keys_fingerprint()

    def has_active(self) -> bool:
        return any(k.revoked is None for k in self.list())

    def verify(self, presented: str) -> ApiKey | None:
        """The key's record if `presented` is a live key, else None (constant-time on the secret)."""
        parts = split_key(presented)
        if parts is None:
            return None
        entry = self.snapshot().get(parts[0])
        expected = entry[1] if entry else secret_hash("x" * 32)  # same work for unknown ids
        ok = hmac.compare_digest(secret_hash(parts[1]), expected)
        if entry is None or not ok or entry[0].revoked is not None:
            return None
        return entry[0]
