"""Fixtures for the participant tests.

The Kafka tests use the broker named by $KAFKA_BOOTSTRAP_SERVERS if set (any real broker will do; these
tests need no Kubernetes), else the local stack's through its `kafka_bootstrap` fixture (saga_testenv's
pytest plugin, which starts the stack when needed); without either they skip.
"""

from __future__ import annotations

import os

import pytest


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
