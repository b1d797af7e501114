"""Fixtures for the participant tests.

The Kafka tests use the broker named by $KAFKA_BOOTSTRAP_SERVERS if set (any real broker will do; these
tests need no Kubernetes), else the local stack's through its `kafka_bootstrap` fixture (saga_testenv's
pytest plugin, which starts the stack when needed); without either they skip.

The PostgreSQL tests start a throwaway server of their own (postgres_support.py), once per session and
only when a test asks for it; without PostgreSQL installed they skip, saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from postgres_support import MISSING, PostgresServer, postgres_server


@pytest.fixture(scope="session")
def participants_kafka(request: pytest.FixtureRequest) -> str:
    """Bootstrap servers ("host:port") of a real Kafka broker."""
    named = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if named:
        return named
    try:
        return str(request.getfixturevalue("kafka_bootstrap"))
    except pytest.FixtureLookupError:
        pytest.skip("no Kafka broker: neither KAFKA_BOOTSTRAP_SERVERS nor the local stack's kafka_bootstrap fixture")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for this session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'saga-operator[postgres]')")
    with postgres_server() as server:
        if server is None:
            pytest.skip(MISSING)
        yield server


@pytest.fixture
def postgres_dsn(postgres: PostgresServer) -> str:
    """The connection string of a fresh, empty database on the session's server."""
    return postgres.create_database()
