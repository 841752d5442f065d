"""Session fixtures for the real backing services the store and jobs suites run against:
a throwaway PostgreSQL database (the server on 127.0.0.1:5432; `.ci/run` starts it), a Tansu
Kafka-protocol broker (tests/kafka_broker.py) and a Milvus server process (tests/milvus_server.py).
Registered for every directory by tests/conftest.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from kafka_broker import tansu_broker
from milvus_server import milvus_server

ADMIN_URL = os.environ.get("APPLIANCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database made for this test run (dropped at the end); its URL."""
    name = f"appliance_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {ADMIN_URL} does not answer ({exc}); start it as ENVIRONMENT says")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_schema_url(database_url: str) -> str:
    """A fresh, empty schema in the run's database, as a URL whose search_path is that schema."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{database_url}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tansu_broker(tmp_path_factory.mktemp("tansu") / "tansu.log") as address:
        yield address


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus server for the session: its "http://127.0.0.1:PORT". milvus-lite's server process on a free
    loopback port, or the server `$APPLIANCE_TEST_MILVUS` names (e.g. a Milvus standalone started by hand)."""
    given = os.environ.get("APPLIANCE_TEST_MILVUS", "")
    if given:
        yield given
        return
    tmp = tmp_path_factory.mktemp("milvus-server")
    with milvus_server(tmp / "data", tmp / "milvus.log") as uri:
        yield uri
