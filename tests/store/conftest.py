"""Fixtures for the store contract suites: every store test runs against SQLite and a real PostgreSQL.

PostgreSQL runs on 127.0.0.1:5432 on the development and CI machines (`.ci/run` starts it); each test
gets its own schema in a database made for this test run, dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from appliance.store import open_store
from appliance.store.sqlcore import SqlStore

ADMIN_URL = os.environ.get("APPLIANCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway database for this test run; its URL."""
    name = f"appliance_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {ADMIN_URL} does not answer ({exc}); start it as ENVIRONMENT says")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    base = ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_schema_url(database_url: str) -> str:
    """A fresh, empty schema in the run's database, as a URL whose search_path is that schema."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{database_url}?options=-csearch_path%3D{schema}"


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
