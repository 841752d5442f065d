"""Fixtures for the store contract suites: every store test runs against SQLite and a real PostgreSQL.

Each PostgreSQL test gets its own schema in the database made for this test run
(tests/backing_services.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from backing_services import pg_schema_url

from appliance.store import open_store
from appliance.store.sqlcore import SqlStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'appliance.db'}"
    return pg_schema_url(request.getfixturevalue("pg_database"))


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store(store_url, tmp_path)
    yield s
    s.close()
