"""Replies on the wire, from a client that is not ours: librdkafka (confluent-kafka; kcat is librdkafka too, but
Debian 12's links 2.0, whose SCRAM Kafka 4 refuses) plays the participant `wire`, as the admin on the secured
listener (the operator knows a reply's participant from its topic), which
the test world lists in SAGA_PARTICIPANTS (its topics exist, the operator reads `saga.replies.wire`) and which
no process of ours serves.

- Replies compressed with gzip, snappy, lz4 and zstd are applied (one step each).
- A record the operator's client cannot read (a header name that is not UTF-8: the broker accepts it, aiokafka
  raises out of getmany on it) is dead-lettered `Undecodable` with its offsets, and the saga whose replies come
  after it on the same partition goes on. No client library writes such a name, so that record is a batch
  built here and sent in a raw Produce request (as tests/e2e/test_corrupt_batches.py does).

The broker refuses a batch whose CRC is wrong or whose compressed payload does not decompress (it validates
every produced batch), so a truly corrupt batch cannot be put on a topic from outside; the header case goes
through the same path in the operator (runtime/replies.py) and the unit tests raise CorruptRecordException.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.errors import for_code
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from saga_harness import kafka_access, librdkafka
from saga_harness.manifests import saga_manifest
from saga_harness.topics import read_topic
from saga_harness.world import WIRE_PARTICIPANT, SagaWorld
from saga_protocol import Command, Outcome, answer, command_topic, decode_command, encode_reply, reply_topic
from saga_testenv.kafka import run_sync

CODECS = ("gzip", "snappy", "lz4", "zstd")


#: The first bytes after a v2 batch's CRC (baseOffset 8, batchLength 4, partitionLeaderEpoch 4, magic 1, crc 4).
CRC_AT, CRC_FROM = 17, 21


def _unreadable_batch(key: bytes, value: bytes, header_name: bytes, rest: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed v2 batch of one record whose first header's name is ``header_name`` (not UTF-8): built
    with a placeholder name of the same length, the bytes swapped in, the CRC made to match again."""
    placeholder = "@" * len(header_name)
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    builder.append(0, timestamp=None, key=key, value=value, headers=[(placeholder, b"x"), *rest])
    batch = bytearray(builder.build())
    at = batch.index(placeholder.encode())
    batch[at : at + len(header_name)] = header_name
    batch[CRC_AT:CRC_FROM] = calc_crc32c(bytes(batch[CRC_FROM:])).to_bytes(4, "big")
    return bytes(batch)


async def _produce_raw(options: dict[str, Any], topic: str, key: bytes, batch: bytes) -> None:
    """``batch`` to the partition Kafka's murmur2 partitioner gives ``key`` (a raw Produce request, acks=all)."""
    client = AIOKafkaClient(**options)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        partitions = sorted(client.cluster.partitions_for_topic(topic) or ())
        partition = DefaultPartitioner()(key, partitions, partitions)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        response = await client.send(leader, ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])]))
        [(_, [answer])] = response.topics
        assert answer[1] == 0, for_code(answer[1]).__name__
    finally:
        await client.close()


async def _commands(options: dict[str, Any], topic: str, uid: str, count: int) -> list[Command]:
    """The first `count` commands of saga `uid` on `topic`, waiting for them up to 90 s (no consumer group)."""
    consumer = AIOKafkaConsumer(topic, **options, auto_offset_reset="earliest", group_id=None)
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


def _reply_record(command: Command, participant: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key, value, headers = encode_reply(answer(command, participant, Outcome.SUCCEEDED, result={"ok": True}))
    return key, value, [(name, raw or b"") for name, raw in headers]


def _recorded_command_id(world: SagaWorld, name: str, index: int, timeout: float = 30.0) -> str | None:
    """The command id the saga's log records for step `index`, once it records one (None after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        steps = (world.get(name).get("status") or {}).get("steps") or []
        recorded = steps[index].get("commandId") if index < len(steps) else None
        if recorded is not None or time.monotonic() > deadline:
            return recorded if isinstance(recorded, str) else None
        time.sleep(0.2)


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
    admin = kafka_access.client_options(world.endpoints)
    librdkafka_config = kafka_access.librdkafka_config(world.endpoints)
    participant = WIRE_PARTICIPANT
    steps = [(f"step-{codec}", participant, "do", "undo") for codec in CODECS]
    name = world.apply(saga_manifest(f"wire-{uuid.uuid4().hex[:8]}", {"n": 1}, steps, timeout_seconds=120))
    uid = world.get(name)["metadata"]["uid"]
    before = world.operator.metric("saga_operator_malformed_messages_total", reason="Undecodable")

    # First a record the operator's client cannot read, keyed like the saga: on the partition its replies use.
    unreadable = _unreadable_batch(uid.encode(), b"{}", b"\xff\xfename", [("ce_type", b"dev.saga.reply.v2")])
    run_sync(_produce_raw(admin, reply_topic(participant), uid.encode(), unreadable))
    for index, codec in enumerate(CODECS):
        command = run_sync(_commands(admin, command_topic(participant), uid, index + 1))[index]
        # Written behind (SAGA_STATUS_WRITES=behind): the log records the command within the coalescing window.
        assert command.message_id == _recorded_command_id(world, name, index)
        assert command.reply_topic == reply_topic(participant)
        librdkafka.produce(librdkafka_config, reply_topic(participant), _reply_record(command, participant), codec)

    body = _wait_phase(world, name, "Succeeded")
    assert [step["result"] for step in body["status"]["steps"]] == [{"ok": True}] * len(CODECS)

    dead = [
        r
        for r in run_sync(read_topic(admin, world.reply_dead_letter_topic))
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
