"""API keys: created once and shown once, stored only as SHA-256 hashes, revocable.

A key reads `sk-app-<id>-<secret>`: the id finds the row without scanning, the secret's hash is then
compared in constant time (hmac.compare_digest). High-entropy secrets make a plain hash safe here.
The rows live in the appliance's store (`appliance.store`: the `keys` table); a `keys.db` left by an
older version is taken over on the first start (`store.import_legacy`).
It must not log or persist a secret: only its hash leaves `create` and `import_token`.

An imported token (`import_token`) is a secret chosen elsewhere, presented as it is: vast.ai's portal
(Caddy) checks `Authorization: Bearer <OPEN_BUTTON_TOKEN or WEB_PASSWORD>` itself and forwards the header
unchanged, so behind it the appliance must accept that same token. Its row id starts with "t" (never a hex
id) and its hash is of "token:" + the token, so it cannot be confused with a key's secret part.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ..store import KeyRow, Store

PREFIX = "sk-app-"
IMPORTED = "t"  # id prefix of imported tokens (key ids are hex)


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


def token_hash(token: str) -> str:
    return hashlib.sha256(("token:" + token).encode()).hexdigest()


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

    def import_token(self, name: str, token: str, admin: bool = False) -> ApiKey:
        """Accept a token chosen elsewhere (vast.ai's portal token) as a key, presented verbatim."""
        if not name.strip():
            raise ValueError("name: must not be empty")
        if len(token) < 16:
            raise ValueError("token: must be at least 16 characters")
        row = KeyRow(IMPORTED + secrets.token_hex(4), name, admin, token_hash(token), time.time(), None)
        self.store.key_insert(row)
        return _key(row)

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
        """The key's record if `presented` is a live key or imported token, else None (constant time)."""
        keys = self.snapshot()
        parts = split_key(presented)
        if parts is None:
            found = match_imported(presented, keys)
            return found if found is not None and found.revoked is None else None
        entry = keys.get(parts[0])
        expected = entry[1] if entry else secret_hash("x" * 32)  # same work for unknown ids
        ok = hmac.compare_digest(secret_hash(parts[1]), expected)
        if entry is None or not ok or entry[0].revoked is not None:
            return None
        return entry[0]


def match_imported(presented: str, keys: dict[str, tuple[ApiKey, str]]) -> ApiKey | None:
    """The imported token `presented` equals, compared in constant time against each imported hash."""
    wanted = token_hash(presented)
    found = None
    for key_id, (key, stored) in keys.items():
        if key_id.startswith(IMPORTED) and hmac.compare_digest(wanted, stored):
            found = key
    return found
