"""Who may call the API: Bearer keys checked against an in-memory copy of the key store, scopes, and
the per-key request rate limit.

Policy (what the README documents):
- `/health` is always open; so are the API docs and signed image URLs (their signature is the check).
- While NO active key exists and the daemon listens on a loopback address, the API is open, so the
  two-command install works on a workstation. (The daemon refuses a non-loopback bind without a key.)
- Once any key exists, every `/v1` and `/api` request needs `Authorization: Bearer <key>`; `/api`
  routes need an admin key, except `GET /api/status`, which any key may read.
- On a non-loopback bind the API is never open, even if every key was revoked after the start.
- A box of a fleet (`fleet.enabled`) takes `/v1` only through its router: the request must carry
  `X-Fleet-Token` equal to the token in `fleet.token_file` (compared in constant time), and then
  the client's own key is checked as usual; an admin key passes without the token; 403 otherwise.

Rate limits (`server.rate_limit_per_minute`): a token bucket per key in this process, or, when the
store is shared (PostgreSQL: a fleet), fixed one-minute windows counted in the store for `/v1`
(`SharedRateLimiter`), so a key's limit holds across every box; that count is one small upsert in a
worker thread per request, and while the store is away the box falls back to its own bucket.

Keys are verified without touching the store per request: `KeyCache` holds id -> (record, hash) and
reloads when the key table's fingerprint changes (asked at most once a second, so `appliance keys
revoke` takes effect within about a second, from any box sharing the store); a key id it does not know
rereads the table at once (at most ten times a second), so a key made on another box works at once.
The secret's SHA-256 is compared with hmac.compare_digest.
It must not write to the key store (the CLI is its one writer).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable

from ..store import StoreError
from .errors import Forbidden, RateLimited, Unauthorized
from .keys import ApiKey, KeyStore, match_imported, secret_hash, split_key

log = logging.getLogger("appliance.gateway")
RECHECK_S = 1.0
UNKNOWN_RECHECK_S = 0.1  # an unknown key id rereads the table at once, at most this often
_DUMMY_HASH = secret_hash("x" * 32)  # compared against for unknown ids: the same work either way


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KeyCache:
    """The key table in memory, refreshed when the store's key table changes."""

    def __init__(self, store: KeyStore, *, clock: Callable[[], float] = time.monotonic,
                 recheck_s: float = RECHECK_S) -> None:
        self.store = store
        self._clock = clock
        self._recheck_s = recheck_s
        self._keys: dict[str, tuple[ApiKey, str]] = {}
        self._fingerprint: object = ()
        self._next_check = 0.0
        self._next_unknown = 0.0
        self.any_active = False
        self.refresh(force=True)

    def refresh(self, force: bool = False, now: bool = False) -> None:
        """Reread the key table if its fingerprint changed (at most every `recheck_s`, unless `now`);
        `force`: reread it whatever the fingerprint, and raise when the store cannot be read."""
        t = self._clock()
        if not (force or now) and t < self._next_check:
            return
        self._next_check = t + self._recheck_s
        try:
            fingerprint = self.store.fingerprint()
            if not force and fingerprint == self._fingerprint:
                return
            keys = self.store.snapshot()
        except StoreError as exc:
            if force:
                raise
            # The store is away (a PostgreSQL restart): keep serving the keys known a moment ago.
            log.warning("API keys: cannot refresh from the store (%s); using the cached keys", exc)
            return
        self._fingerprint = fingerprint
        self._keys = keys
        self.any_active = any(k.revoked is None for k, _ in self._keys.values())

    def verify(self, presented: str) -> tuple[ApiKey | None, str]:
        """(record, "") for a live key, else (None, why) with why in {"invalid", "revoked"}."""
        self.refresh()
        parts = split_key(presented)
        if parts is None:  # not sk-app-...: perhaps an imported token (vast.ai's portal token)
            imported = match_imported(presented, self._keys)
            if imported is None:
                return None, "invalid"
            return (None, "revoked") if imported.revoked is not None else (imported, "")
        key_id, secret = parts
        entry = self._keys.get(key_id)
        if entry is None and self._clock() >= self._next_unknown:
            # A key made a moment ago (on this box by the CLI, or on another box of a fleet): read the
            # table now instead of answering 401 until the next recheck. Bounded, so random ids cannot
            # turn every request into a store query.
            self._next_unknown = self._clock() + UNKNOWN_RECHECK_S
            self.refresh(force=False, now=True)
            entry = self._keys.get(key_id)
        ok = hmac.compare_digest(secret_hash(secret), entry[1] if entry else _DUMMY_HASH)
        if entry is None or not ok:
            return None, "invalid"
        if entry[0].revoked is not None:
            return None, "revoked"
        return entry[0], ""


class RateLimiter:
    """Token bucket per key: `per_minute` requests, refilled continuously; 0 disables it."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, who: str) -> None:
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.get(who, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[who] = (tokens, now)
            raise RateLimited(f"rate limit of {int(self.capacity)} requests per minute reached for this key",
                              retry_after=(1.0 - tokens) / self.rate)
        self._buckets[who] = (tokens - 1.0, now)


WINDOW_S = 60


class SharedRateLimiter:
    """`per_minute` requests per key and fixed minute (by the boxes' clocks), counted in the shared
    store (`count`: `Store.count_request`) so that every box adds to the same count. Off the event
    loop (a worker thread); a store that fails falls back to `fallback`, this box's own bucket."""

    def __init__(self, per_minute: int, count: Callable[[str, int], int], fallback: RateLimiter,
                 clock: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self._count = count
        self._fallback = fallback
        self._clock = clock
        self._store_failing = False

    async def admit(self, who: str) -> None:
        now = self._clock()
        window = int(now // WINDOW_S) * WINDOW_S
        try:
            n = await asyncio.to_thread(self._count, who, window)
        except StoreError as exc:
            if not self._store_failing:
                log.warning("rate limits: the shared store does not answer (%s); limiting per box until it does", exc)
            self._store_failing = True
            self._fallback.admit(who)
            return
        if self._store_failing:
            log.info("rate limits: the shared store answers again; limits are fleet-wide again")
            self._store_failing = False
        if n > self.per_minute:
            raise RateLimited(f"rate limit of {self.per_minute} requests per minute reached for this key "
                              "(counted across the fleet)", retry_after=max(1.0, window + WINDOW_S - now))


class Authenticator:
    def __init__(self, keys: KeyCache, limiter: RateLimiter, *, open_when_no_keys: bool,
                 router_token: str = "", shared: SharedRateLimiter | None = None) -> None:
        """`router_token`: the fleet router's token (fleet.enabled), "" when this box is not in a fleet.
        `shared`: the fleet-wide limiter for /v1 (the `routed` checks); None: `limiter` for all."""
        self.keys = keys
        self.limiter = limiter
        self.shared = shared
        self.open_when_no_keys = open_when_no_keys
        self._router_token = router_token.encode()

    async def admit_routed(self, key: ApiKey | None) -> None:
        """The fleet-wide rate limit of a /v1 request `check` let through (nothing without one)."""
        if self.shared is not None:
            await self.shared.admit(key.id if key is not None else "-")

    def _admit(self, who: str, routed: bool) -> None:
        if routed and self.shared is not None:
            return  # counted fleet-wide by `admit_routed`
        self.limiter.admit(who)

    def check(self, authorization: bytes | None, *, admin: bool, routed: bool = False,
              fleet_token: bytes | None = None) -> ApiKey | None:
        """The caller's key (None when the API is open); raise 401/403/429 as ApiError.

        `routed`: a route a fleet box takes only through its router (`/v1`): `fleet_token` (the
        request's X-Fleet-Token) must be the router's, unless the key is an admin key."""
        self.keys.refresh()
        if self.open_when_no_keys and not self.keys.any_active:
            # Open mode: whatever the client sends (the SDKs insist on some key) is not looked at.
            if routed:
                self._check_router(fleet_token, None)
            self._admit("-", routed)
            return None
        if authorization is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' "
                               "(create one with `appliance keys create --name NAME`)")
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        key, why = self.keys.verify(token.strip())
        if key is None:
            raise Unauthorized("this API key has been revoked" if why == "revoked" else "invalid API key")
        if admin and not key.admin:
            raise Forbidden(f"key {key.name!r} is not an admin key; this route needs one")
        if routed:
            self._check_router(fleet_token, key)
        self._admit(key.id, routed)
        return key

    def _check_router(self, presented: bytes | None, key: ApiKey | None) -> None:
        if not self._router_token:
            return
        ok = hmac.compare_digest(presented.strip() if presented is not None else b"", self._router_token)
        if ok or (key is not None and key.admin):
            return
        raise Forbidden("this box is part of a fleet and takes /v1 requests only through its router "
                        "(X-Fleet-Token missing or wrong): send them to the router's address",
                        code="fleet_router_required")
