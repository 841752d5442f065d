"""Key verification, scopes, the rate limit and the error mapping, driven directly with fake clocks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.gateway.auth import Authenticator, KeyCache, RateLimiter, is_loopback
from appliance.gateway.errors import (
    ApiError,
    CannotFit,
    Forbidden,
    QueueFull,
    RateLimited,
    Unauthorized,
    Unavailable,
    from_lease_error,
)
from appliance.gateway.keys import KeyStore
from appliance.residency import CannotFitError, ModelUnavailable, QueueFullError
from appliance.store import open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    backing = open_store("", tmp_path)
    yield KeyStore(backing)
    backing.close()


def test_key_cache_verifies_without_the_database_and_sees_revocation_after_recheck(store: KeyStore) -> None:
    _, secret = store.create("alice")
    clock = Clock()
    cache = KeyCache(store, clock=clock, recheck_s=1.0)
    key, why = cache.verify(secret)
    assert key is not None and key.name == "alice" and why == ""
    store.revoke("alice")
    assert cache.verify(secret)[0] is not None  # within the recheck interval: the cached copy
    clock.now += 1.5
    assert cache.verify(secret) == (None, "revoked")


def test_a_key_made_after_the_last_recheck_works_at_once_and_unknown_ids_reread_at_most_every_tenth_second(
        store: KeyStore) -> None:
    clock = Clock()
    cache = KeyCache(store, clock=clock, recheck_s=1.0)
    reads = 0
    snapshot = store.snapshot

    def counted() -> dict[str, object]:
        nonlocal reads
        reads += 1
        return snapshot()  # type: ignore[return-value]

    store.snapshot = counted  # type: ignore[method-assign]
    _, secret = store.create("dave")  # as on another box of the fleet: this cache was not told
    key, why = cache.verify(secret)  # no clock advance: read because the id is unknown
    assert key is not None and key.name == "dave" and why == "" and reads == 1
    stranger = "sk-app-0123abcd-" + secret.split("-", 3)[3]
    for _ in range(5):
        assert cache.verify(stranger) == (None, "invalid")
    assert reads == 1  # the table did not change: fingerprints only, and at most one of them here
    clock.now += 0.2
    _, other = store.create("erin")
    assert cache.verify(other)[0] is not None and reads == 2


def test_key_cache_rejects_tampered_and_foreign_keys(store: KeyStore) -> None:
    _, secret = store.create("bob")
    cache = KeyCache(store)
    assert cache.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) == (None, "invalid")
    assert cache.verify("sk-app-ffffffff-" + secret.split("-", 3)[3]) == (None, "invalid")
    assert cache.verify("sk-other-key") == (None, "invalid")


def test_authenticator_scopes_and_open_mode(store: KeyStore) -> None:
    clock = Clock()
    open_auth = Authenticator(KeyCache(store, clock=clock), RateLimiter(0), open_when_no_keys=True)
    assert open_auth.check(None, admin=True) is None  # no key exists: open on loopback
    assert open_auth.check(b"Bearer whatever", admin=False) is None
    _, user = store.create("user")
    _, admin = store.create("root", admin=True)
    clock.now += 2
    with pytest.raises(Unauthorized):
        open_auth.check(None, admin=False)
    key = open_auth.check(bearer(user), admin=False)
    assert key is not None and not key.admin
    with pytest.raises(Forbidden):
        open_auth.check(bearer(user), admin=True)
    root = open_auth.check(bearer(admin), admin=True)
    assert root is not None and root.admin


def test_never_open_on_a_public_bind_even_without_keys(store: KeyStore) -> None:
    auth = Authenticator(KeyCache(store), RateLimiter(0), open_when_no_keys=False)
    with pytest.raises(Unauthorized):
        auth.check(None, admin=False)
    with pytest.raises(Unauthorized):
        auth.check(b"Bearer sk-app-00000000-x", admin=False)


def test_rate_limiter_refills_per_key() -> None:
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)  # one token every 10 s
    for _ in range(6):
        limiter.admit("a")
    with pytest.raises(RateLimited) as err:
        limiter.admit("a")
    assert err.value.retry_after == pytest.approx(10.0)
    limiter.admit("b")  # another key has its own bucket
    clock.now += 10
    limiter.admit("a")
    with pytest.raises(RateLimited):
        limiter.admit("a")


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                ("0.0.0.0", False), ("192.0.2.1", False)])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("exc", "kind", "status"), [
    (QueueFullError("full", retry_after=3), QueueFull, 429),
    (CannotFitError("too big", retry_after=30), CannotFit, 503),
    (ModelUnavailable("fatal", retry_after=12), Unavailable, 503),
])
def test_lease_errors_map_to_status_with_retry_after(exc: Exception, kind: type[ApiError], status: int) -> None:
    err = from_lease_error(exc)  # type: ignore[arg-type]
    assert isinstance(err, kind) and err.status == status
    assert int(err.headers()["Retry-After"]) == round(exc.retry_after)  # type: ignore[attr-defined]
    body = json.loads(err.payload())["error"]
    assert body["message"] == str(exc) and body["code"] == err.code


def test_error_as_sse_event_is_one_data_line() -> None:
    event = Unavailable("engine gone").sse_event()
    assert event.startswith(b"data: {") and event.endswith(b"\n\n") and event.count(b"\n") == 2
    assert json.loads(event[6:])["error"]["message"] == "engine gone"


def test_key_cache_keeps_serving_cached_keys_when_the_store_goes_away(tmp_path: Path) -> None:
    backing = open_store("", tmp_path / "away")
    keys = KeyStore(backing)
    _, secret = keys.create("carol")
    clock = Clock()
    cache = KeyCache(keys, clock=clock, recheck_s=1.0)
    backing.close()  # the store stops answering (StoreError on every call)
    clock.now += 2
    key, why = cache.verify(secret)
    assert key is not None and key.name == "carol" and why == ""
