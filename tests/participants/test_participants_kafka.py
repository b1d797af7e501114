"""Participants over a real Kafka broker: delivery, dedupe, tombstones, retries, dead letters, money.

Every test uses participants with names of its own (so topics and consumer groups of its own) and a
reply topic of its own, so tests neither see each other's messages nor the demo's on the same broker.
Per-saga ordering makes the assertions deterministic: commands of one saga share a key, hence a
partition and a lane, and a participant handles one saga's records in order (different sagas' concurrently:
test_participants_concurrency.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiokafka.codec
import pytest
from participants_support import (
    BUY_VIDEO_STEPS,
    KafkaHarness,
    compensation_of,
    headers_of,
    make_command,
    order,
    unique,
    until,
)

from saga_buyvideo import SERVICES, users
from saga_buyvideo.demo import DEMO_AGENTS, DEMO_USERS, read_ledger, seed
from saga_harness import librdkafka
from saga_participants import KafkaSettings, Participant, RetryPolicy
from saga_plumbing import DLQ_ORIGINAL_OFFSET, DLQ_ORIGINAL_TOPIC, DLQ_REASON, DLQ_SOURCE
from saga_protocol import MAX_MESSAGE_BYTES, Command, Outcome, decode_reply, encode_command

pytestmark = pytest.mark.stack


@pytest.fixture
async def kafka(participants_kafka: KafkaSettings) -> AsyncIterator[KafkaHarness]:
    async with KafkaHarness(participants_kafka) as harness:
        yield harness


def users_service(tmp_path: Path, kafka: KafkaHarness, **options: Any) -> Participant:
    seed(tmp_path)
    options.setdefault("reply_topic", kafka.reply_topic)
    return users.participant(tmp_path / "users.db", name=unique("users"), kafka=kafka.settings, **options)


def debit(p: Participant, kafka: KafkaHarness, buyer: str = "alice", price: int = 1500, **kw: Any) -> Command:
    return kafka.with_reply_topic(
        make_command(action="debit", step="debit-buyer", payload=order(buyer=buyer, price=price), **kw)
    )


def ledger_users(tmp_path: Path) -> dict[str, int]:
    users_balances: dict[str, int] = read_ledger(tmp_path)["users"]
    return users_balances


def debit_rows(tmp_path: Path) -> int:
    conn = sqlite3.connect(tmp_path / "users.db")
    try:
        value: int = conn.execute("SELECT count(*) FROM debits").fetchone()[0]
        return value
    finally:
        conn.close()


async def test_a_command_delivered_twice_is_applied_once_and_the_second_reply_is_a_replay(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    p = await kafka.start(users_service(tmp_path, kafka))
    command = debit(p, kafka)

    await kafka.send(command, p.command_topic)
    await kafka.send(command, p.command_topic)  # the very same message, as a producer retry would
    first, second = await kafka.replies_for(command, count=2)

    assert (first.outcome, first.duplicate) == (Outcome.SUCCEEDED, False)
    assert (second.outcome, second.duplicate) == (Outcome.SUCCEEDED, True)
    assert second.result == first.result == {"buyer": "alice", "debitedCents": 1500, "balanceCents": 8500}
    assert first.participant == p.name and first.saga_uid == command.saga_uid
    assert ledger_users(tmp_path)["alice"] == 10_000 - 1500
    assert debit_rows(tmp_path) == 1
    assert p.metrics.value("saga_participant_duplicates_total", kind="action") == 1


async def test_a_compensation_that_overtakes_its_action_leaves_a_tombstone_and_the_late_action_is_refused(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    p = await kafka.start(users_service(tmp_path, kafka))
    action = debit(p, kafka)
    compensation = compensation_of(action, "refund")

    await kafka.send(compensation, p.command_topic)
    await kafka.send(action, p.command_topic)
    undo = await kafka.reply_to(compensation)
    late = await kafka.reply_to(action)

    assert undo.outcome is Outcome.SUCCEEDED and undo.result == {"noop": "ActionNotApplied"}
    assert late.outcome is Outcome.FAILED
    assert late.error is not None and late.error.reason == "AlreadyCompensated"
    assert ledger_users(tmp_path)["alice"] == 10_000
    assert debit_rows(tmp_path) == 0
    assert p.metrics.value("saga_participant_tombstones_total") == 1
    assert p.metrics.value("saga_participant_refused_late_actions_total") == 1


async def test_insufficient_funds_replies_failed_and_changes_nothing(tmp_path: Path, kafka: KafkaHarness) -> None:
    p = await kafka.start(users_service(tmp_path, kafka))
    command = debit(p, kafka, buyer="bob", price=1500)

    await kafka.send(command, p.command_topic)
    reply = await kafka.reply_to(command)

    assert reply.outcome is Outcome.FAILED and reply.result is None
    assert reply.error is not None and reply.error.reason == "InsufficientFunds"
    assert ledger_users(tmp_path) == DEMO_USERS
    assert debit_rows(tmp_path) == 0


async def test_an_unexpected_exception_is_retried_then_replied_error_and_a_redelivery_runs_again(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    runs: list[int] = []
    healthy = False
    p = Participant(
        unique("flaky"),
        database=tmp_path / "flaky.db",
        schema="CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY);",
        kafka=kafka.settings,
        reply_topic=kafka.reply_topic,
        retry=RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05),
    )

    @p.action("poke")
    def poke(tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
        runs.append(command.attempt)
        tx.execute("INSERT INTO effects VALUES (?)", (command.idempotency_key,))
        if not healthy:
            raise OSError("a dependency is down")
        return {"poked": True}

    await kafka.start(p)
    first = kafka.with_reply_topic(make_command(action="poke", step="poke"))
    await kafka.send(first, p.command_topic)
    error = await kafka.reply_to(first)

    assert error.outcome is Outcome.ERROR and error.attempt == 1
    assert error.error is not None and error.error.reason == "OSError"
    assert runs == [1, 1, 1]

    healthy = True  # the operator's retry, once the dependency is back
    retry = first.model_copy(update={"attempt": 2, "message_id": str(uuid.uuid4())})
    await kafka.send(retry, p.command_topic)
    replies = await kafka.replies_for(first, count=2)

    assert replies[1].outcome is Outcome.SUCCEEDED and replies[1].attempt == 2 and not replies[1].duplicate
    assert runs == [1, 1, 1, 2]


async def test_malformed_commands_are_dead_lettered_and_the_next_good_command_is_processed(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    p = await kafka.start(users_service(tmp_path, kafka))
    unknown = debit(p, kafka).model_copy(update={"action": "launch-rockets"})
    wrong_key = debit(p, kafka)
    oversized = b'{"padding": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'
    _, unknown_value, unknown_headers = encode_command(unknown)
    _, wrong_key_value, wrong_key_headers = encode_command(wrong_key)

    await kafka.send_raw(p.command_topic, b"{not json")
    await kafka.send_raw(p.command_topic, b'{"messageId": "m-1", "hello": "world"}')
    await kafka.send_raw(p.command_topic, oversized)
    await kafka.send_raw(p.command_topic, unknown_value, key=unknown.saga_uid.encode(), headers=unknown_headers)
    await kafka.send_raw(p.command_topic, wrong_key_value, key=b"not-the-saga-uid", headers=wrong_key_headers)
    good = debit(p, kafka)
    await kafka.send(good, p.command_topic)

    reply = await kafka.reply_to(good)
    assert reply.outcome is Outcome.SUCCEEDED
    # In offset order: messages of different keys (sagas) are handled, hence dead-lettered, concurrently.
    dead = sorted(
        await kafka.read_topic(p.dead_letter_topic, 5), key=lambda record: int(headers_of(record)[DLQ_ORIGINAL_OFFSET])
    )
    reasons = [headers_of(record)[DLQ_REASON] for record in dead]
    assert reasons == ["NotJson", "SchemaViolation", "Oversized", "UnknownAction", "KeyMismatch"]
    assert [headers_of(record)[DLQ_ORIGINAL_OFFSET] for record in dead] == ["0", "1", "2", "3", "4"]
    assert {headers_of(record)[DLQ_ORIGINAL_TOPIC] for record in dead} == {p.command_topic}
    assert {headers_of(record)[DLQ_SOURCE] for record in dead} == {p.name}
    assert dead[0].value == b"{not json" and dead[2].value == oversized
    assert p.metrics.value("saga_participant_malformed_messages_total", reason="Oversized") == 1
    # A decodable command that names no handler is also answered, so the step fails at once.
    refused = await kafka.reply_to(unknown)
    assert refused.outcome is Outcome.FAILED and refused.error is not None
    assert refused.error.reason == "UnknownAction"
    assert ledger_users(tmp_path)["alice"] == 10_000 - 1500  # only the good debit applied


async def test_a_reply_that_cannot_be_produced_sends_the_command_to_the_dead_letter_topic(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    missing = unique("no.such.topic")
    p = await kafka.start(users_service(tmp_path, kafka, reply_timeout=2.0, reply_topic=missing))
    for price in (1500, 100):  # the second is not held up behind the first for ever
        command = debit(p, kafka, price=price).model_copy(update={"reply_topic": missing})
        key, value, headers = encode_command(command)
        await kafka.send_raw(p.command_topic, value, key=key, headers=headers)

    dead = await kafka.read_topic(p.dead_letter_topic, 2)
    assert [headers_of(d)[DLQ_REASON] for d in dead] == ["ReplyUndeliverable"] * 2
    # The outcomes were stored before the replies failed: the debits stand, and a re-send would replay them.
    assert ledger_users(tmp_path)["alice"] == 10_000 - 1500 - 100


async def test_a_restarted_participant_resumes_after_the_last_answered_command(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    name = unique("users")
    seed(tmp_path)
    first = await kafka.start(
        users.participant(tmp_path / "users.db", name=name, kafka=kafka.settings, reply_topic=kafka.reply_topic)
    )
    before = debit(first, kafka, price=100)
    await kafka.send(before, first.command_topic)
    await kafka.reply_to(before)
    await kafka.stop(first)

    second = await kafka.start(
        users.participant(tmp_path / "users.db", name=name, kafka=kafka.settings, reply_topic=kafka.reply_topic)
    )
    after = debit(second, kafka, price=200)
    await kafka.send(after, second.command_topic)
    await kafka.reply_to(after)

    # Had the first command's offset not been committed, its replay would be in the reply topic too.
    assert len(await kafka.replies_for(before, count=1)) == 1
    assert len([r for r in kafka.replies if r.idempotency_key == before.idempotency_key]) == 1
    assert ledger_users(tmp_path)["alice"] == 10_000 - 300


async def test_three_services_over_kafka_conserve_money_whatever_the_saga_outcome(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    """A miniature operator drives the buy-video saga over the real broker: success, a failure at the
    debit (one compensation) and a failure at the agent (two compensations, in reverse order)."""
    seed(tmp_path)
    names = {service: unique(service) for service, *_ in BUY_VIDEO_STEPS}
    services = {
        service: await kafka.start(
            factory(
                tmp_path / f"{service}.db",
                name=names[service],
                kafka=kafka.settings,
                reply_topic=kafka.reply_topic,
            )
        )
        for service, factory in SERVICES.items()
    }
    compensation_for = {step: compensation for _, step, _, compensation in BUY_VIDEO_STEPS}
    total = sum(DEMO_USERS.values()) + sum(balance for _, balance in DEMO_AGENTS.values())
    compensated: list[str] = []

    async def saga(payload: dict[str, Any]) -> str:
        uid, done = str(uuid.uuid4()), list[tuple[str, str, Command]]()
        for service, step, action, _ in BUY_VIDEO_STEPS:
            command = kafka.with_reply_topic(make_command(saga_uid=uid, step=step, action=action, payload=payload))
            await kafka.send(command, services[service].command_topic)
            reply = await kafka.reply_to(command)
            if reply.outcome is not Outcome.SUCCEEDED:
                for service_done, step_done, command_done in reversed(done):
                    undo = compensation_of(command_done, compensation_for[step_done])
                    await kafka.send(undo, services[service_done].command_topic)
                    assert (await kafka.reply_to(undo)).outcome is Outcome.SUCCEEDED
                    compensated.append(f"{uid[:4]}:{step_done}")
                assert reply.error is not None
                return reply.error.reason
            done.append((service, step, command))
        return "Succeeded"

    happy = await saga(order(buyer="alice", video="v-1", price=1500))
    broke = await saga(order(buyer="bob", video="v-2", price=1500))
    closed = await saga(order(buyer="carol", video="v-3", price=2000, agent="closed-agency"))
    ledger = read_ledger(tmp_path)

    assert (happy, broke, closed) == ("Succeeded", "InsufficientFunds", "AgentClosed")
    assert [entry.split(":")[1] for entry in compensated] == ["record-purchase", "debit-buyer", "record-purchase"]
    assert ledger["moneyTotal"] == total
    assert ledger["consistent"] and ledger["completedSagas"] == 1
    assert (ledger["users"]["alice"], ledger["users"]["bob"], ledger["users"]["carol"]) == (8500, 500, 2500)
    assert ledger["agents"]["bob-agency"]["balance"] == 1500
    assert (
        sum(
            s.metrics.value("saga_participant_commands_total", kind="compensation", outcome="succeeded")
            for s in services.values()
        )
        == 3
    )


async def test_stopped_between_the_database_commit_and_the_reply_the_redelivery_replays_the_outcome(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    name, late_topic = unique("users"), unique("saga.replies.late")
    seed(tmp_path)

    def service() -> Participant:
        return users.participant(
            tmp_path / "users.db",
            name=name,
            kafka=kafka.settings,
            reply_topic=late_topic,
            reply_timeout=600.0,
        )

    first = await kafka.start(service())
    command = debit(first, kafka).model_copy(update={"reply_topic": late_topic})  # a topic that is not there yet
    key, value, headers = encode_command(command)
    await kafka.send_raw(first.command_topic, value, key=key, headers=headers)
    await until(lambda: ledger_users(tmp_path)["alice"] == 8500, what="the debit to be committed")
    # The outcome is committed; the participant is stuck producing the reply. Stop it there.
    await kafka.stop(first)

    await kafka.create_topic(late_topic)
    await kafka.start(service())
    (record,) = await kafka.read_topic(late_topic, 1)
    reply = decode_reply(record.value, list(record.headers))

    assert reply.outcome is Outcome.SUCCEEDED and reply.duplicate
    assert reply.result == {"buyer": "alice", "debitedCents": 1500, "balanceCents": 8500}
    assert ledger_users(tmp_path)["alice"] == 8500
    assert debit_rows(tmp_path) == 1


async def test_commands_compressed_with_any_codec_are_applied(tmp_path: Path, kafka: KafkaHarness) -> None:
    p = await kafka.start(users_service(tmp_path, kafka))
    commands = {codec: debit(p, kafka, price=100) for codec in ("gzip", "snappy", "lz4", "zstd")}
    for codec, command in commands.items():
        await asyncio.to_thread(
            librdkafka.produce, kafka.librdkafka_config(), p.command_topic, encode_command(command), codec
        )

    for codec, command in commands.items():
        reply = await kafka.reply_to(command)
        assert reply.outcome is Outcome.SUCCEEDED and not reply.duplicate, codec
    assert ledger_users(tmp_path)["alice"] == 10_000 - 400


async def test_a_record_that_cannot_be_decompressed_is_dead_lettered_undecodable_and_skipped(
    tmp_path: Path, kafka: KafkaHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker keeps a valid snappy batch; this participant's client cannot decompress it (as if its
    snappy library were missing): it must not stall the partition."""
    monkeypatch.setattr(aiokafka.codec, "has_snappy", lambda: False)
    p = await kafka.start(users_service(tmp_path, kafka))
    before, unreadable, after = (debit(p, kafka, price=price) for price in (100, 200, 400))
    await kafka.send(before, p.command_topic)
    assert (await kafka.reply_to(before)).outcome is Outcome.SUCCEEDED
    await asyncio.to_thread(
        librdkafka.produce, kafka.librdkafka_config(), p.command_topic, encode_command(unreadable), "snappy"
    )
    await kafka.send(after, p.command_topic)

    assert (await kafka.reply_to(after)).outcome is Outcome.SUCCEEDED
    (dead,) = await kafka.read_topic(p.dead_letter_topic, 1)
    headers = headers_of(dead)
    assert headers[DLQ_REASON] == "Undecodable" and headers[DLQ_SOURCE] == p.name
    assert (headers[DLQ_ORIGINAL_TOPIC], headers[DLQ_ORIGINAL_OFFSET]) == (p.command_topic, "1")
    assert "snappy" in headers["dlq_detail"] and dead.value == b""
    assert ledger_users(tmp_path)["alice"] == 10_000 - 500  # the unreadable debit applied nothing
    assert not [r for r in kafka.replies if r.idempotency_key == unreadable.idempotency_key]
    assert p.metrics.value("saga_participant_malformed_messages_total", reason="Undecodable") == 1
