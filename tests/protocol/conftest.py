"""Fixtures for the protocol tests: the broker for the conformance kit's runs, and who is who on it.

The local stack's secured listener (saga_testenv's plugin starts it when needed; with KUBECONFIG and
KAFKA_BOOTSTRAP_SERVERS set, the stack those and SAGA_TESTENV_KAFKA_* describe): the kit runs as the
admin (it creates the topics and plays the operator), the participant under test as its own principal
with the ACLs of docs/operations.md ("Security"). With only KAFKA_BOOTSTRAP_SERVERS set, both inherit
the KAFKA_* environment as it is. Without either the kit's tests skip.
"""

from __future__ import annotations

import os
import shlex

import pytest
from kit_support import ProtocolKafka

from saga_harness import kafka_access
from saga_protocol import reply_topic
from saga_testenv.stack import StackEndpoints


@pytest.fixture(scope="session")
def protocol_kafka(request: pytest.FixtureRequest) -> ProtocolKafka:
    named = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if named and not os.environ.get("KUBECONFIG"):
        return ProtocolKafka(named, dict(os.environ), lambda _name: "")
    try:
        stack: StackEndpoints = request.getfixturevalue("stack")
    except pytest.FixtureLookupError:
        pytest.skip("no Kafka broker: neither KAFKA_BOOTSTRAP_SERVERS nor the local stack")
    admin = kafka_access.client_env(stack, kafka_access.ADMIN)

    def participant(name: str) -> str:
        principal = kafka_access.participant_principal(name)
        kafka_access.provision(
            stack, {principal: kafka_access.participant_acls(name, reply_topics=[reply_topic(name)])}
        )
        # the kit creates the topics as the admin; the participant may not
        env = {**kafka_access.client_env(stack, principal), "SAGA_CREATE_TOPICS": "false"}
        return "".join(f"{key}={shlex.quote(value)} " for key, value in env.items())

    return ProtocolKafka(admin["KAFKA_BOOTSTRAP_SERVERS"], {**os.environ, **admin}, participant)
