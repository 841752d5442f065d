"""An imported token (vast.ai's portal token, forwarded unchanged by its Caddy) is accepted verbatim as a key,
compared in constant time, revocable, and never confused with the secret part of an sk-app key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.gateway.auth import KeyCache
from appliance.gateway.keys import PREFIX, KeyStore
from appliance.store import open_store

TOKEN = "c0ffee" * 8


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyStore]:
    store = open_store("", tmp_path)  # the embedded store under this state directory
    yield KeyStore(store)
    store.close()


def test_an_imported_token_is_a_key_until_revoked(keys: KeyStore) -> None:
    store = keys
    key = store.import_token("vast-OPEN_BUTTON_TOKEN", TOKEN, admin=True)
    cache = KeyCache(store)
    found, why = cache.verify(TOKEN)
    assert found == key and why == "" and key.id.startswith("t") and store.verify(TOKEN) == key
    assert cache.verify(TOKEN + "x") == (None, "invalid")
    store.revoke(key.id)
    cache.refresh(force=True)
    assert cache.verify(TOKEN) == (None, "revoked") and store.verify(TOKEN) is None


def test_an_sk_app_secret_alone_is_not_an_imported_token(keys: KeyStore) -> None:
    store = keys
    _, full = store.create("admin")
    secret = full[len(PREFIX):].split("-", 1)[1]
    cache = KeyCache(store)
    assert cache.verify(full)[0] is not None
    assert cache.verify(secret) == (None, "invalid") and store.verify(secret) is None


def test_short_tokens_are_refused(keys: KeyStore) -> None:
    with pytest.raises(ValueError, match="token: must be at least 16 characters"):
        keys.import_token("x", "short")
