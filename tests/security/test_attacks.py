"""Attacks on the saga's Kafka traffic, against the real secured broker (SASL_SSL, SCRAM-SHA-512,
StandardAuthorizer, the ACL table of docs/operations.md "Security"). Each attack must be refused, and the
books must not move: the participants' SQLite ledgers and the Sagas' status are read before and after.

One isolated world for the module (a ChaosWorld: its own namespace, participant names, topics, groups),
its processes each running as its own principal. The attackers are aiokafka clients holding the
credentials of the principal they abuse (the stack's password files), or none.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from saga_harness import kafka_access
from saga_harness.chaos.world import ChaosWorld
from saga_harness.messages import action_command, succeeded_reply
from saga_harness.topics import read_records, read_topic
from saga_plumbing import DLQ_REASON
from saga_protocol import dead_letter_topic, encode_command, encode_reply, reply_topic
from saga_testenv import Acl, TopicSpec, check_connection, run_sync
from saga_testenv.stack import Stack, StackEndpoints

pytestmark = pytest.mark.stack

USERS, VIDEOS = kafka_access.participant_principal("users"), kafka_access.participant_principal("videos")
#: The principals' own reply topics (protocol v2: only p may write saga.replies.<p>).
PURCHASE = {"buyer": "alice", "video": "v-security", "price": 300, "agent": "acme-films"}


@pytest.fixture(scope="module")
def world(stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosWorld]:
    if not kafka_access.secured(stack):
        pytest.skip("the broker's security is not known (no secured listener, CA or admin credentials)")
    run_dir: Path = tmp_path_factory.mktemp("security-world")
    world = ChaosWorld(stack, run_dir)
    # Protocol v2's reply topic of each participant, with the table's ACL: only that principal writes it.
    own_replies = {service: reply_topic(name) for service, name in world.names.items()}
    kafka_access.provision(
        stack,
        {
            kafka_access.participant_principal(service): [Acl.topic(topic, "Write")]
            for service, topic in own_replies.items()
        },
    )
    run_sync(kafka_access.create_topics(stack, [TopicSpec(t, 1) for t in own_replies.values()]))
    world.start()
    try:
        yield world
    finally:
        world.stop()


@pytest.fixture(scope="module")
def finished(world: ChaosWorld) -> dict[str, Any]:
    """One saga that ran to Succeeded through the secured broker: the world works, and its replies are
    there to replay."""
    world.apply([world.saga("honest", PURCHASE)])
    body = world.wait_terminal(["honest"], timeout=120)["honest"]
    assert body["status"]["phase"] == "Succeeded", json.dumps(body.get("status"), indent=1)
    return body


def books(world: ChaosWorld) -> dict[str, Any]:
    """The three ledgers and every saga's status (phase, seq, steps) of the world."""
    ledger = world.world.ledger()
    sagas = {n: {k: b.get("status", {}).get(k) for k in ("phase", "seq", "steps")} for n, b in world.bodies().items()}
    return {"ledger": ledger, "sagas": sagas}


def settle(seconds: float = 3.0) -> None:
    """Long enough for a participant or the operator to have acted on a record that got through."""
    import time

    time.sleep(seconds)


def forged_debit(world: ChaosWorld) -> tuple[str, bytes, bytes, Any]:
    """A well-formed command to `users` that would debit alice 300 cents if it were applied."""
    saga_uid = str(uuid.uuid4())
    command = action_command(
        saga_uid,
        "debit-buyer",
        "debit",
        {**PURCHASE, "price": 300},
        world.reply_topic,
        saga_namespace=world.namespace,
        saga_name="forged",
    )
    key, value, headers = encode_command(command)
    return world.command_topic("users"), key, value, headers


async def _produce(options: dict[str, Any], topic: str, key: bytes, value: bytes, headers: Any) -> None:
    producer = AIOKafkaProducer(**options, acks="all", request_timeout_ms=10_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


def _positions(records: list[Any]) -> list[tuple[int, int]]:
    return sorted((r.partition, r.offset) for r in records)


def as_principal(stack: StackEndpoints, principal: str) -> dict[str, Any]:
    return kafka_access.client_options(stack, principal)


# ---------------------------------------------------------------------------------------------- attacks


def test_a_forged_command_without_credentials_is_refused_at_the_connection(
    world: ChaosWorld, finished: dict[str, Any], stack: StackEndpoints
) -> None:
    before = books(world)
    topic, key, value, headers = forged_debit(world)
    secured = stack.kafka_secure_bootstrap
    assert secured is not None
    # No TLS, no SASL, at the secured listener: the broker closes the connection.
    with pytest.raises(KafkaConnectionError):
        run_sync(_produce({"bootstrap_servers": secured}, topic, key, value, headers))
    # TLS but no SASL: the same.
    with pytest.raises(KafkaConnectionError):
        run_sync(
            _produce(
                {"bootstrap_servers": secured, "security_protocol": "SSL", "ssl_context": stack.kafka_ssl_context()},
                topic,
                key,
                value,
                headers,
            )
        )
    # A known principal with a guessed password: refused by SCRAM.
    wrong = {**kafka_access.security_options(stack, USERS), "sasl_plain_password": "guessed"}
    with pytest.raises(SaslAuthenticationFailed):
        run_sync(check_connection(secured, **wrong))
    settle()
    assert books(world) == before


def test_no_listener_takes_a_client_without_credentials(
    world: ChaosWorld, finished: dict[str, Any], stack: StackEndpoints
) -> None:
    """The stack has no plaintext listener: KAFKA_BOOTSTRAP_SERVERS is the secured one, and at every
    listener the broker has (for a stack started here, as its configuration names them: the controller's
    too) a forged command from a client without credentials, with TLS or without, is refused at the
    connection. The books do not move."""
    assert stack.kafka_plaintext_bootstrap is None
    assert stack.kafka_bootstrap == stack.kafka_secure_bootstrap
    addresses = {stack.kafka_bootstrap}
    if isinstance(stack, Stack):
        props = (stack.directory / "kafka" / "server.properties").read_text().splitlines()
        (listeners,) = (line.removeprefix("listeners=") for line in props if line.startswith("listeners="))
        addresses |= {entry.partition("://")[2] for entry in listeners.split(",")}
        assert len(addresses) == 2, addresses  # the client (BROKER) and the controller listener
    before = books(world)
    topic, key, value, headers = forged_debit(world)
    tls_only = {"security_protocol": "SSL", "ssl_context": stack.kafka_ssl_context()}
    for address in sorted(addresses):
        for settings in ({}, tls_only):
            with pytest.raises(KafkaConnectionError):
                run_sync(_produce({"bootstrap_servers": address, **settings}, topic, key, value, headers))
    settle()
    assert books(world) == before


def test_a_participant_cannot_write_another_participants_commands(
    world: ChaosWorld, finished: dict[str, Any], stack: StackEndpoints
) -> None:
    users = world.participants["users"]
    before, handled = books(world), users.metric("saga_participant_commands_total")
    topic, key, value, headers = forged_debit(world)
    with pytest.raises(TopicAuthorizationFailedError):
        run_sync(_produce(as_principal(stack, VIDEOS), topic, key, value, headers))
    settle()
    assert books(world) == before
    assert users.metric("saga_participant_commands_total") == handled


def test_a_participant_cannot_forge_another_participants_reply(
    world: ChaosWorld, finished: dict[str, Any], stack: StackEndpoints
) -> None:
    """videos writes a `users` reply on saga.replies.<users>: the topic only users may write."""
    before = books(world)
    steps = {s["name"]: s for s in finished["status"]["steps"]}
    assert "debit-buyer" in steps
    reply = succeeded_reply(finished["metadata"]["uid"], "debit-buyer", world.names["users"])
    key, value, headers = encode_reply(reply)
    target = reply_topic(world.names["users"])
    admin = kafka_access.client_options(stack)
    honest = _positions(run_sync(read_topic(admin, target, patience=30)))  # the honest saga's debit reply
    assert honest
    with pytest.raises(TopicAuthorizationFailedError):
        run_sync(_produce(as_principal(stack, VIDEOS), target, key, value, headers))
    # nothing landed on the topic (read as the admin): its records are the honest ones
    assert _positions(run_sync(read_topic(admin, target, patience=30))) == honest
    settle()
    assert books(world) == before


def test_a_participant_cannot_read_another_participants_commands(
    world: ChaosWorld, finished: dict[str, Any], stack: StackEndpoints
) -> None:
    """videos reads saga.commands.<users> (the honest saga's debit is on it): the broker does not even
    describe the topic to it, and a fetch, with or without users' consumer group, yields nothing."""
    topic = world.command_topic("users")
    admin = kafka_access.client_options(stack)
    assert run_sync(read_topic(admin, topic)), "the topic has the honest saga's command"

    async def describe_as_videos() -> int:
        client = AIOKafkaAdminClient(**as_principal(stack, VIDEOS), request_timeout_ms=10_000)
        await client.start()
        try:
            (described,) = await client.describe_topics([topic])
            return int(described["error_code"])
        finally:
            await client.close()

    assert run_sync(describe_as_videos()) == TopicAuthorizationFailedError.errno

    async def read_as_videos(group: str | None) -> list[Any] | BaseException:
        consumer = AIOKafkaConsumer(
            **as_principal(stack, VIDEOS), group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        got: list[Any] = []
        try:
            if group is None:
                consumer.assign([TopicPartition(topic, p) for p in range(3)])
            else:
                consumer.subscribe([topic])
            for _ in range(5):
                batch = await consumer.getmany(timeout_ms=1000)
                got += [r for records in batch.values() for r in records]
        except (TopicAuthorizationFailedError, GroupAuthorizationFailedError) as exc:
            refused: BaseException = exc
            return refused
        finally:
            await consumer.stop()
        return got

    without_group = run_sync(read_as_videos(None))
    assert without_group == [] or isinstance(without_group, KafkaError), without_group
    stolen_group = run_sync(read_as_videos(world.participant_group("users")))
    assert stolen_group == [] or isinstance(stolen_group, KafkaError), stolen_group


def test_a_participant_cannot_create_a_topic(world: ChaosWorld, stack: StackEndpoints) -> None:
    name = f"saga.commands.{world.names['users']}-shadow"

    async def create_as_users() -> list[Any]:
        admin = AIOKafkaAdminClient(**as_principal(stack, USERS), request_timeout_ms=10_000)
        await admin.start()
        try:
            response = await admin.create_topics([NewTopic(name, 1, 1)])
            return list(response.topic_errors)
        finally:
            await admin.close()

    try:
        errors = run_sync(create_as_users())
    except KafkaError as exc:  # refused as a whole: as good
        assert "Authorization" in type(exc).__name__, exc
    else:
        assert [(e[0], e[1]) for e in errors] == [(name, TopicAuthorizationFailedError.errno)], errors

    async def exists() -> bool:
        admin = AIOKafkaAdminClient(**kafka_access.client_options(stack))
        await admin.start()
        try:
            return name in await admin.list_topics()
        finally:
            await admin.close()

    assert not run_sync(exists())


def test_a_command_naming_a_foreign_reply_topic_gets_no_reply_there(
    world: ChaosWorld, finished: dict[str, Any], stack: StackEndpoints
) -> None:
    """The operator (its credentials: it may write every command topic) sends `agents` a command whose
    replyTopic is saga.replies.<videos>. Two defences stop it: the SDK replies only on its trusted topic
    and dead-letters the command `UntrustedReplyTopic` unanswered, and the broker would refuse agents a
    write to that topic anyway. No reply to it arrives anywhere."""
    foreign = reply_topic(world.names["videos"])
    command = action_command(
        str(uuid.uuid4()),
        "credit-agent",
        "credit",
        {**PURCHASE, "price": 1},
        foreign,
        saga_namespace=world.namespace,
        saga_name="foreign-reply",
    )
    key, value, headers = encode_command(command)
    run_sync(_produce(as_principal(stack, kafka_access.OPERATOR), world.command_topic("agents"), key, value, headers))
    admin = kafka_access.client_options(stack)
    dlq = dead_letter_topic(world.command_topic("agents"))
    for _ in range(60):  # until agents has set the command aside
        dead = [r for r in run_sync(read_topic(admin, dlq, patience=30)) if r.key == key]
        if dead:
            break
        settle(0.5)
    assert [dict(r.headers).get(DLQ_REASON) for r in dead] == [b"UntrustedReplyTopic"]
    for topic in (foreign, reply_topic(world.names["agents"])):
        assert [r for r in run_sync(read_topic(admin, topic, patience=30)) if r.key == key] == [], topic
    assert world.participants["agents"].running()


def test_a_replayed_reply_is_ignored_and_moves_nothing(
    world: ChaosWorld, finished: dict[str, Any], stack: StackEndpoints
) -> None:
    """The honest saga's own replies, replayed by the principal that wrote them (the broker lets it: it is
    that participant's topic): the operator recognises them as stale and changes nothing."""
    uid = finished["metadata"]["uid"]
    admin = kafka_access.client_options(stack)
    old = [r for r in run_sync(read_records(admin, world.reply_topics)) if (r.key or b"").decode() == uid]
    assert len(old) >= 3, "one reply per step at least"
    operator = world.operator
    reasons = ("SagaFinished", "Duplicate", "Late")
    ignored_before = sum(operator.metric("saga_operator_replies_ignored_total", reason=r) for r in reasons)
    malformed_before = operator.metric("saga_operator_malformed_messages_total")
    before = books(world)

    async def replay() -> None:
        by_service = {name: service for service, name in world.names.items()}
        for record in old:
            sender = json.loads(record.value)["participant"]
            principal = kafka_access.participant_principal(by_service[sender])
            await _produce(
                as_principal(stack, principal), record.topic, record.key, record.value, list(record.headers or ())
            )

    run_sync(replay())
    for _ in range(60):
        ignored = sum(operator.metric("saga_operator_replies_ignored_total", reason=r) for r in reasons)
        if ignored - ignored_before >= len(old):
            break
        settle(0.5)
    assert ignored - ignored_before == len(old)
    assert operator.metric("saga_operator_malformed_messages_total") == malformed_before
    assert books(world) == before
