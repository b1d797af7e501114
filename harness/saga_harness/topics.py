"""Kafka topics read back without a consumer group: their partitions, their records, a group's lag, a header;
and a new group's starting offsets set at the topics' ends.

For runs that check what went over the wire after the fact: the chaos run's audit of the dead-letter
topics and its drain before the audit, the benchmark's timings from the messages' own timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

#: Where and as whom the readers connect: a bootstrap ("host:port", no authentication) or aiokafka's
#: client settings with ``bootstrap_servers`` (``kafka_access.client_options(endpoints)``: the admin).
KafkaClient = str | Mapping[str, Any]


def options(kafka: KafkaClient) -> dict[str, Any]:
    """aiokafka keyword arguments for ``kafka``."""
    return {"bootstrap_servers": kafka} if isinstance(kafka, str) else dict(kafka)


class TopicError(RuntimeError):
    """A topic cannot be described, or reading it back takes too long."""


async def partitions_of(kafka: KafkaClient, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of `topics` (which must exist), from a Metadata request."""
    admin = AIOKafkaAdminClient(**options(kafka))
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    out = []
    for topic in described:
        if topic.get("error_code", 0) != 0:
            raise TopicError(f"topic {topic.get('topic')} cannot be described (error {topic.get('error_code')})")
        out += [TopicPartition(topic["topic"], p["partition"]) for p in topic.get("partitions") or []]
    return sorted(out)


async def read_records(kafka: KafkaClient, topics: Sequence[str], *, patience: float | None = 60.0) -> list[Any]:
    """Every record of `topics` from the beginning up to their end offsets now (no consumer group).
    `patience`: seconds before giving up with TopicError (None: no limit)."""
    tps = await partitions_of(kafka, topics)
    if not tps:
        return []
    consumer = AIOKafkaConsumer(**options(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = None if patience is None else time.monotonic() + patience
        pending = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
        while pending:
            if deadline is not None and time.monotonic() > deadline:
                raise TopicError(f"reading {', '.join(topics)} back took longer than {patience:.0f}s")
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=5000)
            for messages in batch.values():
                records.extend(messages)
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return records
    finally:
        await consumer.stop()


async def read_topic(kafka: KafkaClient, topic: str, patience: float = 60.0) -> list[Any]:
    """Every record of `topic` from the beginning up to its end offsets now (no consumer group)."""
    return await read_records(kafka, [topic], patience=patience)


async def start_group_at_end(kafka: KafkaClient, group: str, topics: Sequence[str]) -> None:
    """Commit `group`'s offsets at the end of `topics` now: a group that starts later reads only what comes after
    (its reset policy, earliest for the operator, applies only to a group with no offsets)."""
    tps = await partitions_of(kafka, topics)
    if not tps:
        return
    consumer = AIOKafkaConsumer(**options(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: OffsetAndMetadata(ends[tp], "") for tp in tps})
    finally:
        await consumer.stop()


async def group_lag(kafka: KafkaClient, group: str, topics: Sequence[str]) -> int:
    """Records on `topics` that `group` has not committed yet (a group that never committed: all)."""
    tps = await partitions_of(kafka, topics)
    consumer = AIOKafkaConsumer(**options(kafka), enable_auto_commit=False)
    admin = AIOKafkaAdminClient(**options(kafka))
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        lag = 0
        for tp in tps:
            done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0
            lag += max(0, ends[tp] - done)
        return lag
    finally:
        await admin.close()
        await consumer.stop()


def header(record: Any, name: str) -> bytes | None:
    """The value of a record's header `name` (None: no such header, or a null value)."""
    for key, value in record.headers or ():
        if key == name:
            return value if value is None else bytes(value)
    return None
