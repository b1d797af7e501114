"""Replies on the wire, from a client that is not ours: kcat (librdkafka) plays the participant `wire`, which
the test world lists in SAGA_PARTICIPANTS (its topics exist, the operator reads `saga.replies.wire`) and which
no process of ours serves.

- Replies compressed with gzip, snappy, lz4 and zstd are applied (one step each).
- A record the operator's client cannot read (a header name that is not UTF-8: the broker accepts it, aiokafka
  raises out of getmany on it) is dead-lettered `Undecodable` with its offsets, and the saga whose replies come
  after it on the same partition goes on.

The broker refuses a batch whose CRC is wrong or whose compressed payload does not decompress (it validates
every produced batch), so a truly corrupt batch cannot be put on a topic from outside; the header case goes
through the same path in the operator (runtime/replies.py) and the unit tests raise CorruptRecordException.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer

from saga_harness.manifests import saga_manifest
from saga_harness.topics import read_topic
from saga_harness.world import WIRE_PARTICIPANT, SagaWorld
from saga_protocol import Command, Outcome, answer, command_topic, decode_command, encode_reply, reply_topic
from saga_testenv.kafka import run_sync

CODECS = ("gzip", "snappy", "lz4", "zstd")


def kcat_produce(
    bootstrap: str, topic: str, key: bytes, value: bytes, headers: list[tuple[bytes, bytes]], codec: str
) -> None:
    """One record, produced by librdkafka with Kafka's murmur2 partitioner (docs/protocol.md §3.1, §16)."""
    argv: list[bytes] = [b"kcat", b"-P", b"-b", bootstrap.encode(), b"-t", topic.encode(), b"-z", codec.encode()]
    argv += [b"-X", b"partitioner=murmur2_random", b"-X", b"enable.idempotence=true", b"-k", key]
    for name, header_value in headers:
        argv += [b"-H", name + b"=" + header_value]
    subprocess.run(argv, input=value + b"\n", check=True, timeout=30, capture_output=True)


async def _commands(bootstrap: str, topic: str, uid: str, count: int) -> list[Command]:
    """The first `count` commands of saga `uid` on `topic`, waiting for them up to 90 s (no consumer group)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found: list[Command] = []
    deadline = time.monotonic() + 90.0
    try:
        while len(found) < count:
            assert time.monotonic() < deadline, f"only {len(found)} of {count} commands of {uid} on {topic}"
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    command = decode_command(record.value, list(record.headers))
                    if command.saga_uid == uid:
                        found.append(command)
    finally:
        await consumer.stop()
    return found


def _reply_record(command: Command, participant: str) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    key, value, headers = encode_reply(answer(command, participant, Outcome.SUCCEEDED, result={"ok": True}))
    return key, value, [(name.encode(), raw or b"") for name, raw in headers]


def _wait_phase(world: SagaWorld, name: str, phase: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = world.get(name)
        if (body.get("status") or {}).get("phase") == phase:
            return body
        assert time.monotonic() < deadline, f"{name} is {(body.get('status') or {}).get('phase')}, not {phase}"
        time.sleep(0.3)


def test_replies_in_every_codec_from_another_client_are_applied_and_an_unreadable_one_is_skipped(
    world: SagaWorld,
) -> None:
    bootstrap = world.endpoints.kafka_bootstrap
    participant = WIRE_PARTICIPANT
    steps = [(f"step-{codec}", participant, "do", "undo") for codec in CODECS]
    name = world.apply(saga_manifest(f"wire-{uuid.uuid4().hex[:8]}", {"n": 1}, steps, timeout_seconds=120))
    uid = world.get(name)["metadata"]["uid"]
    before = world.operator.metric("saga_operator_malformed_messages_total", reason="Undecodable")

    # First a record the operator's client cannot read, keyed like the saga: on the partition its replies use.
    unreadable_headers = [(b"\xff\xfename", b"x"), (b"ce_type", b"dev.saga.reply.v2")]
    kcat_produce(bootstrap, reply_topic(participant), uid.encode(), b"{}", unreadable_headers, "none")
    for index, codec in enumerate(CODECS):
        command = run_sync(_commands(bootstrap, command_topic(participant), uid, index + 1))[index]
        assert command.message_id == world.get(name)["status"]["steps"][index]["commandId"]
        assert command.reply_topic == reply_topic(participant)
        key, value, headers = _reply_record(command, participant)
        kcat_produce(bootstrap, reply_topic(participant), key, value, headers, codec)

    body = _wait_phase(world, name, "Succeeded")
    assert [step["result"] for step in body["status"]["steps"]] == [{"ok": True}] * len(CODECS)

    dead = [
        r
        for r in run_sync(read_topic(bootstrap, world.reply_dead_letter_topic))
        if dict(r.headers).get("dlq_topic") == reply_topic(participant).encode()
    ]
    assert len(dead) == 1, dead
    letter = dict(dead[0].headers)
    assert letter["dlq_reason"] == b"Undecodable"
    assert letter["dlq_source"] == b"saga-operator"
    assert letter["dlq_offset"] == b"0" and letter["dlq_partition"] is not None
    assert dead[0].value == b""
    assert world.operator.metric("saga_operator_malformed_messages_total", reason="Undecodable") == before + 1
    assert world.operator.metric("saga_operator_replies_pending") == 0
