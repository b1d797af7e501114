"""Fixtures for the participant tests.

The Kafka tests authenticate as the admin (`participants_kafka`, a `KafkaSettings`): on the local stack's
secured listener (saga_testenv's pytest plugin starts the stack when needed; with KUBECONFIG and
KAFKA_BOOTSTRAP_SERVERS set, the stack those and SAGA_TESTENV_KAFKA_* describe). With only
KAFKA_BOOTSTRAP_SERVERS set (these tests need no Kubernetes), the broker and its security come from the
KAFKA_* environment as the SDK reads it (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_USERNAME, ...).

The PostgreSQL tests start a throwaway server of their own (postgres_support.py), once per session and
only when a test asks for it; without PostgreSQL installed they skip, saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from postgres_support import MISSING, PostgresServer, postgres_server

from saga_harness import kafka_access
from saga_participants import KafkaSettings


@pytest.fixture(scope="session")
def participants_kafka(request: pytest.FixtureRequest) -> KafkaSettings:
    """The admin's settings on a real Kafka broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and not os.environ.get("KUBECONFIG"):
        return KafkaSettings()
    try:
        stack = request.getfixturevalue("stack")
    except pytest.FixtureLookupError:
        pytest.skip("no Kafka broker: neither KAFKA_BOOTSTRAP_SERVERS nor the local stack's fixture")
    return kafka_access.kafka_settings(stack)


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
