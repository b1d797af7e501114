"""Who the harness's processes are on Kafka: each its own SCRAM principal over SASL_SSL, with the ACLs of
docs/operations.md ("Security"), and topics created by the admin alone before anything starts.

* ``client_env(endpoints, principal)``: the ``KAFKA_*`` variables of a process (the operator, a
  participant, the bench's echo): the secured listener, SASL_SSL, SCRAM-SHA-512, the principal's name, its
  0600 password *file* (never the password itself in an environment) and the CA.
* ``client_options(endpoints, principal)``: the same as aiokafka keyword arguments, for the harness's and
  the tests' own clients (``AIOKafkaProducer(**client_options(endpoints))`` is the admin);
  ``kafka_settings`` as a ``saga_plumbing.KafkaSettings`` (what the SDK's ``Participant(kafka=...)`` and
  the operator take); ``librdkafka_config`` for librdkafka clients (confluent-kafka, kcat's ``-X``).
* ``operator_acls``/``participant_acls``: the ACL table; ``provision`` makes the principals and grants.

A broker whose security the endpoints do not describe (a foreign one without
``SAGA_TESTENV_KAFKA_SECURE_BOOTSTRAP`` and credentials) is used as before: ``KAFKA_BOOTSTRAP_SERVERS``
and nothing else, no ACLs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from saga_plumbing import KafkaSettings
from saga_testenv import ADMIN_PRINCIPAL, OPERATOR_PRINCIPAL, Acl, Stack, TopicSpec, ensure_topics
from saga_testenv.kafka_auth import SASL_MECHANISM, SECURITY_PROTOCOL, password_file
from saga_testenv.stack import StackEndpoints

ADMIN = ADMIN_PRINCIPAL
OPERATOR = OPERATOR_PRINCIPAL
#: The prefix of every command topic (saga_protocol.command_topic) and of every reply topic.
COMMANDS_PREFIX = "saga.commands."
REPLIES_PREFIX = "saga.replies."


def participant_principal(name: str) -> str:
    """``saga-participant-<name>``: who participant ``name`` is on the broker."""
    return f"saga-participant-{name}"


def secured(endpoints: StackEndpoints) -> bool:
    """Whether the endpoints name the secured listener, its CA and the admin's credentials."""
    if not endpoints.kafka_secure_bootstrap or endpoints.kafka_ca_file is None:
        return False
    return ADMIN in endpoints.kafka_principals()


def bootstrap(endpoints: StackEndpoints) -> str:
    """The listener the harness's clients use: the secured one when known."""
    if secured(endpoints) and endpoints.kafka_secure_bootstrap:
        return endpoints.kafka_secure_bootstrap
    return endpoints.kafka_bootstrap


def client_env(endpoints: StackEndpoints, principal: str) -> dict[str, str]:
    """``KAFKA_*`` for a process that authenticates as ``principal`` (saga_plumbing.KafkaSettings reads them).
    These replace the stack's KAFKA_BOOTSTRAP_SERVERS."""
    if not secured(endpoints):
        return {"KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap}
    assert endpoints.kafka_credentials_dir is not None and endpoints.kafka_ca_file is not None
    # the file may not exist yet: ``provision`` makes the principal before the process starts and reads it
    secret = password_file(endpoints.kafka_credentials_dir, principal)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap(endpoints),
        "KAFKA_SECURITY_PROTOCOL": SECURITY_PROTOCOL,
        "KAFKA_SASL_MECHANISM": SASL_MECHANISM,
        "KAFKA_SASL_USERNAME": principal,
        "KAFKA_SASL_PASSWORD_FILE": str(secret),
        "KAFKA_SSL_CA_FILE": str(endpoints.kafka_ca_file),
    }


def service_env(endpoints: StackEndpoints, principal: str) -> dict[str, str]:
    """``endpoints.env()`` (KUBECONFIG and the stack's variables) with ``principal``'s ``KAFKA_*``."""
    return {**endpoints.env(), **client_env(endpoints, principal)}


def client_options(endpoints: StackEndpoints, principal: str = ADMIN) -> dict[str, Any]:
    """aiokafka keyword arguments (``bootstrap_servers`` included) that authenticate as ``principal``."""
    if not secured(endpoints):
        return {"bootstrap_servers": endpoints.kafka_bootstrap}
    return endpoints.kafka_client_config(principal)


def kafka_settings(endpoints: StackEndpoints, principal: str = ADMIN) -> KafkaSettings:
    """``client_env`` as the typed settings the operator and the SDK read from ``KAFKA_*``."""
    env = client_env(endpoints, principal)
    return KafkaSettings.model_validate({k.removeprefix("KAFKA_").lower(): v for k, v in env.items()})


def librdkafka_config(endpoints: StackEndpoints, principal: str = ADMIN) -> dict[str, str]:
    """librdkafka's settings (``bootstrap.servers`` included) that authenticate as ``principal``."""
    if not secured(endpoints):
        return {"bootstrap.servers": endpoints.kafka_bootstrap}
    return endpoints.kafka_librdkafka_config(principal)


def security_options(endpoints: StackEndpoints, principal: str = ADMIN) -> dict[str, Any]:
    """``client_options`` without ``bootstrap_servers``."""
    options = client_options(endpoints, principal)
    options.pop("bootstrap_servers")
    return options


# ----------------------------------------------------------------------------------------- the ACL table


def operator_acls(*, group: str, reply_dead_letter_topics: Iterable[str], group_prefixed: bool = False) -> list[Acl]:
    """The operator's: write every command topic, read every reply topic as its group, write the
    dead-letter topic(s) of the replies. Nothing on the cluster: it creates no topic."""
    return [
        Acl.topic(COMMANDS_PREFIX, "Write", prefixed=True),
        Acl.topic(REPLIES_PREFIX, "Read", prefixed=True),
        Acl.group(group, "Read", prefixed=group_prefixed),
        *(Acl.topic(t, "Write") for t in dict.fromkeys(reply_dead_letter_topics)),
    ]


def participant_acls(name: str, *, reply_topics: Iterable[str], group: str | None = None) -> list[Acl]:
    """Participant ``name``'s: read its command topic as its group, write its reply topic and its
    command dead-letter topic. Nothing else: not another participant's topics, no topic creation."""
    command = f"{COMMANDS_PREFIX}{name}"
    return [
        Acl.topic(command, "Read"),
        Acl.group(group or participant_principal(name), "Read"),
        *(Acl.topic(t, "Write") for t in dict.fromkeys(reply_topics)),
        Acl.topic(f"{command}.dlq", "Write"),
    ]


def controller(endpoints: StackEndpoints) -> Stack | None:
    """The ``Stack`` that can make principals and grant ACLs: the endpoints themselves, or the local stack
    the environment names (``make up``'s, whose credentials directory is ``<stack>/kafka/credentials``)."""
    if isinstance(endpoints, Stack):
        return endpoints
    if endpoints.kafka_credentials_dir is None:
        return None
    return Stack.attach(Path(endpoints.kafka_credentials_dir).parent.parent)


#: ACLs this process has granted, per broker: each run of Kafka's ACL tool is a JVM start (seconds under
#: load), and a world's ACLs are mostly the previous world's.
_granted: set[tuple[str, str, Acl]] = set()


def provision(endpoints: StackEndpoints, grants: Mapping[str, Iterable[Acl]]) -> None:
    """Make every principal of ``grants`` that the stack lacks and grant it its ACLs (as the admin, with
    Kafka's tool). Nothing on a broker whose security is not known."""
    if not secured(endpoints):
        return
    stack = controller(endpoints)
    if stack is None:
        raise RuntimeError("the Kafka broker is secured but no local stack can grant ACLs on it")
    broker = bootstrap(endpoints)
    for principal in grants:
        if principal not in stack.kafka_principals():
            stack.add_kafka_principal(principal)
    missing = {p: [a for a in acls if (broker, p, a) not in _granted] for p, acls in grants.items()}
    missing = {p: acls for p, acls in missing.items() if acls}
    if missing:
        stack.grant_all(missing)
        _granted.update((broker, p, a) for p, acls in missing.items() for a in acls)


async def create_topics(endpoints: StackEndpoints, topics: Iterable[TopicSpec]) -> list[str]:
    """Create the missing topics as the admin (the only principal that may); returns those created."""
    return await ensure_topics(bootstrap(endpoints), list(topics), **security_options(endpoints, ADMIN))
