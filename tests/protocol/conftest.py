"""Fixtures for the protocol tests: the broker for the conformance kit's run.

$KAFKA_BOOTSTRAP_SERVERS if set (any broker will do), else the local stack's (saga_testenv's plugin starts
it when needed); without either the kit's tests skip.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def protocol_kafka(request: pytest.FixtureRequest) -> str:
    named = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if named:
        return named
    try:
        return str(request.getfixturevalue("kafka_bootstrap"))
    except pytest.FixtureLookupError:
        pytest.skip("no Kafka broker: neither KAFKA_BOOTSTRAP_SERVERS nor the local stack")
