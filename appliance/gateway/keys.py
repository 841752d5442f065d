"""API keys: created once and shown once, stored only as SHA-256 hashes, revocable.

A key reads `sk-app-<id>-<secret>`: the id finds the row without scanning, the secret's hash is then
compared in constant time (hmac.compare_digest). High-entropy secrets make a plain hash safe here.
The store is SQLite (sqlite-utils) under `<state>/data/keys.db`; one writer (the CLI or the daemon).

An imported token (`import_token`) is a secret chosen elsewhere, presented as it is: vast.ai's portal
(Caddy) checks `Authorization: Bearer <OPEN_BUTTON_TOKEN or WEB_PASSWORD>` itself and forwards the header
unchanged, so behind it the appliance must accept that same token. Its row id starts with "t" (never a hex
id) and its hash is of "token:" + the token, so it cannot be confused with a key's secret part.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

PREFIX = "sk-app-"
IMPORTED = "t"  # id prefix of imported tokens (key ids are hex)


def token_hash(token: str) -> str:
    return hashlib.sha256(("token:" + token).encode()).hexdigest()


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


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _db(self) -> sqlite_utils.Database:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        db = sqlite_utils.Database(conn)
        if "keys" not in db.table_names():
            db.table("keys").create({"id": str, "name": str, "admin": int, "hash": str, "created": float,
                               "revoked": float}, pk="id", not_null={"name", "hash"})
            self.path.chmod(0o600)
        return db

    def create(self, name: str, admin: bool = False) -> tuple[ApiKey, str]:
        if not name.strip():
            raise ValueError("name: must not be empty")
        key_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(24)
        now = time.time()
        db = self._db()
        with db.conn:
            db.table("keys").insert({"id": key_id, "name": name, "admin": int(admin), "hash": _hash(secret),
                               "created": now, "revoked": None})
        return ApiKey(key_id, name, admin, now, None), f"{PREFIX}{key_id}-{secret}"

    def import_token(self, name: str, token: str, admin: bool = False) -> ApiKey:
        """Accept a token chosen elsewhere (vast.ai's portal token) as a key, presented verbatim."""
        if not name.strip():
            raise ValueError("name: must not be empty")
        if len(token) < 16:
            raise ValueError("token: must be at least 16 characters")
        key_id = IMPORTED + secrets.token_hex(4)
        now = time.time()
        db = self._db()
        with db.conn:
            db.table("keys").insert({"id": key_id, "name": name, "admin": int(admin), "hash": token_hash(token),
                                     "created": now, "revoked": None})
        return ApiKey(key_id, name, admin, now, None)

    def list(self) -> list[ApiKey]:
        if not self.path.exists():
            return []
        rows = self._db().query("select id, name, admin, created, revoked from keys order by created")
        return [ApiKey(r["id"], r["name"], bool(r["admin"]), r["created"], r["revoked"]) for r in rows]

    def revoke(self, key_id_or_name: str) -> int:
        db = self._db()
        with db.conn:
            cur = db.execute("update keys set revoked = ? where (id = ? or name = ?) and revoked is null",
                             [time.time(), key_id_or_name, key_id_or_name])
        return cur.rowcount

    def snapshot(self) -> dict[str, tuple[ApiKey, str]]:
        """Every key by id with its stored hash: the daemon's in-memory copy (see gateway.auth)."""
        if not self.path.exists():
            return {}
        rows = self._db().query("select id, name, admin, hash, created, revoked from keys")
        return {r["id"]: (ApiKey(r["id"], r["name"], bool(r["admin"]), r["created"], r["revoked"]), r["hash"])
                for r in rows}

    def has_active(self) -> bool:
        return any(k.revoked is None for k in self.list())

    def verify(self, presented: str) -> ApiKey | None:
        """The key's record if `presented` is a live key, else None (constant-time on the secret)."""
        if not presented.startswith(PREFIX):
            found = match_imported(presented, self.snapshot())
            return found if found is not None and found.revoked is None else None
        key_id, _, secret = presented[len(PREFIX):].partition("-")
        if not key_id or not secret or not self.path.exists():
            return None
        rows = list(self._db().query("select * from keys where id = ?", [key_id]))
        expected = rows[0]["hash"] if rows else _hash("x" * 32)  # same work for unknown ids
        ok = hmac.compare_digest(_hash(secret), expected)
        if not rows or not ok or rows[0]["revoked"] is not None:
            return None
        r = rows[0]
        return ApiKey(r["id"], r["name"], bool(r["admin"]), r["created"], r["revoked"])


def match_imported(presented: str, keys: dict[str, tuple[ApiKey, str]]) -> ApiKey | None:
    """The imported token `presented` equals, compared in constant time against each imported hash."""
    wanted = token_hash(presented)
    found = None
    for key_id, (key, stored) in keys.items():
        if key_id.startswith(IMPORTED) and hmac.compare_digest(wanted, stored):
            found = key
    return found
