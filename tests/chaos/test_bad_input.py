"""Bad input on the wire: malformed replies are dead-lettered by the operator with the reason in a header,
counted in `saga_operator_malformed_messages_total{reason}`, and change nothing; stale replies (a settled
step, a finished saga) are the normal noise of at-least-once delivery: ignored and counted in
`saga_operator_replies_ignored_total{reason}`, not dead-lettered. The operator keeps running and the
other sagas are unaffected.

Malformed commands at a participant in general are tested in tests/participants/test_participants_kafka.py
(test_malformed_commands_are_dead_lettered_and_the_next_good_command_is_processed); here only the two
inputs that once poisoned a participant's consume loop (docs/chaos.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from saga_harness import kafka_access
from saga_harness.chaos.malformed import (
    MARKER,
    NEEDS_SAGA,
    REPLY_KINDS,
    Injected,
    Injector,
    Made,
    make_malformed_command,
    make_malformed_reply,
)
from saga_harness.chaos.probes import http_status, wait_until
from saga_harness.chaos.world import ChaosWorld
from saga_harness.topics import group_lag, read_records, read_topic
from saga_plumbing import DLQ_REASON
from saga_protocol import dead_letter_topic, decode_reply
from saga_testenv.kafka import run_sync

pytestmark = pytest.mark.stack

MakeWorld = Callable[..., ChaosWorld]


def headers_of(record: Any) -> dict[str, bytes | None]:
    return {k: (None if v is None else bytes(v)) for k, v in record.headers or ()}


def purchase(video: str) -> dict[str, Any]:
    return {"buyer": "alice", "video": video, "price": 300, "agent": "acme-films"}


async def _inject(kafka: dict[str, Any], sends: Sequence[tuple[str, str, Made, str | None]]) -> list[Injected]:
    injector = Injector(kafka)
    await injector.start()
    try:
        return [await injector.send(topic, kind, made, saga) for topic, kind, made, saga in sends]
    finally:
        await injector.stop()


async def _copy(kafka: dict[str, Any], records: list[Any]) -> None:
    producer = AIOKafkaProducer(**kafka, acks="all")
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(
                r.topic, r.value, key=r.key, partition=r.partition, headers=list(r.headers or ())
            )
    finally:
        await producer.stop()


def test_malformed_replies_are_dead_lettered_counted_and_harm_nothing(make_world: MakeWorld) -> None:
    world = make_world()
    operator, admin = world.operator, kafka_access.client_options(world.endpoints)  # the admin
    world.apply([world.saga("target", purchase("v-target"))])
    target = world.wait_terminal(["target"], timeout=120)["target"]
    assert target["status"]["phase"] == "Succeeded"
    uid, seq = target["metadata"]["uid"], target["status"]["seq"]
    assert operator.record is not None
    pid = operator.record.pid
    ignored_before = operator.metric("saga_operator_replies_ignored_total", reason="SagaFinished")

    # Every kind of malformed reply (those about a saga aim at the finished one), the target's real
    # replies once more (stale: its steps are settled), and a bystander saga started meanwhile.
    sends = [
        (
            world.reply_topic,
            kind,
            make_malformed_reply(kind, uid, world.names["users"]),
            uid if kind in NEEDS_SAGA else None,
        )
        for kind in REPLY_KINDS
    ]
    replies = run_sync(read_records(admin, world.reply_topics))
    stale = [r for r in replies if (r.key or b"").decode() == uid]
    assert len(stale) >= 3  # one per step (more if the slow machine made the operator retry)
    world.apply([world.saga("bystander", purchase("v-bystander"))])
    injected = run_sync(_inject(admin, sends))
    run_sync(_copy(admin, stale))
    assert all(i.acked for i in injected)

    bystander = world.wait_terminal(["bystander"], timeout=120)["bystander"]
    assert bystander["status"]["phase"] == "Succeeded"
    wait_until(
        lambda: run_sync(group_lag(admin, world.operator_group, world.reply_topics)) == 0,
        60,
        "the operator through the reply topic",
        every=1.0,
    )

    dead = run_sync(read_topic(admin, world.reply_dead_letter_topic))
    by_marker = {headers_of(r)[MARKER]: r for r in dead if headers_of(r).get(MARKER)}
    assert len(dead) == len(by_marker) == len(injected), "only the malformed ones, each once"
    reasons: dict[str, str] = {}
    for item, (_, kind, made, _) in zip(injected, sends, strict=True):
        record = by_marker[item.id.encode()]
        headers = headers_of(record)
        reasons[kind] = (headers["dlq_reason"] or b"").decode()
        assert reasons[kind] in item.expected, kind
        assert headers["dlq_topic"] == world.reply_topic.encode()
        assert headers["dlq_partition"] is not None and headers["dlq_offset"] is not None
        assert record.value == made[0], f"{kind}: the bytes are kept unchanged"
    assert reasons["future-compensation"] == "CompensationNotSent"  # the target never compensated anything
    for reason, count in Counter(reasons.values()).items():
        assert operator.metric("saga_operator_malformed_messages_total", reason=reason) == count, reason

    # The stale copies were recognised and counted, not dead-lettered; the target did not move.
    ignored = operator.metric("saga_operator_replies_ignored_total", reason="SagaFinished") - ignored_before
    assert ignored == len(stale)
    assert all(decode_reply(r.value, list(r.headers)).saga_uid == uid for r in stale)
    assert world.get("target")["status"]["seq"] == seq
    assert operator.running() and operator.record.pid == pid and operator.starts == 1
    assert http_status(operator, "/readyz") == 200


def test_a_participant_moves_past_a_null_header_and_a_deeply_nested_command(make_world: MakeWorld) -> None:
    world = make_world()
    users, admin = world.participants["users"], kafka_access.client_options(world.endpoints)  # the admin
    topic = world.command_topic("users")
    sends = [
        (topic, kind, make_malformed_command(kind, world.names["users"], world.reply_topic), None)
        for kind in ("null-type-header", "nested-too-deep")
    ]
    injected = run_sync(_inject(admin, sends))
    # A good saga behind them in the same topic: it finishes only if the participant moved on.
    world.apply([world.saga("behind-poison", purchase("v-poison"))])
    body = world.wait_terminal(["behind-poison"], timeout=120)["behind-poison"]
    assert body["status"]["phase"] == "Succeeded"
    dead = run_sync(read_topic(admin, dead_letter_topic(topic)))
    reasons = {headers_of(r)[MARKER]: headers_of(r)[DLQ_REASON] for r in dead}
    assert reasons == {i.id.encode(): i.expected[0].encode() for i in injected}
    assert users.metric("saga_participant_malformed_messages_total", reason="WrongType") == 1
    assert users.metric("saga_participant_malformed_messages_total", reason="TooDeep") == 1
    assert users.starts == 1 and users.running()
