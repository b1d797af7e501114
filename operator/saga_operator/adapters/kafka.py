"""The Kafka side: topic admin, the command producer, the reply consumer, the dead-letter topic.

Settings that the defaults get wrong for a saga coordinator: the producer is idempotent with
acks=all (a command acknowledged is a command on every in-sync replica, never duplicated by the
client's own retries); the consumer does not auto-commit (offsets are committed by the runtime
*after* the status write that applies the reply) and starts from the earliest offset (a reply that
arrived while the operator was down must still be applied).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from saga_protocol import Command, encode_command

log = logging.getLogger(__name__)


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, replication: int) -> None:
    """Create the topics that are missing. A topic that exists already is fine, whatever its layout."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(n, partitions, replication) for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return
        try:
            response = await admin.create_topics(wanted)
        except TopicAlreadyExistsError:
            return
        for topic, code, *_ in getattr(response, "topic_errors", []):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"could not create topic {topic}: error code {code}")
    finally:
        await admin.close()


def new_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=1,
        request_timeout_ms=15000,
    )


def new_reply_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        # A slow API server must not cost the group membership.
        max_poll_interval_ms=600_000,
    )


async def send_command(producer: AIOKafkaProducer, topic: str, command: Command) -> None:
    key, value, headers = encode_command(command, source=f"/saga-operator/{command.saga_namespace}")
    await producer.send_and_wait(topic, value, key=key, headers=headers)


async def dead_letter(producer: AIOKafkaProducer, topic: str, message: Any, reason: str, detail: str) -> None:
    """Set a message aside with why, and where it came from, in headers; its bytes unchanged."""
    headers = [
        *(message.headers or ()),
        ("dlq_reason", reason.encode()),
        ("dlq_detail", detail.encode()[:1024]),
        ("dlq_topic", str(message.topic).encode()),
        ("dlq_partition", str(message.partition).encode()),
        ("dlq_offset", str(message.offset).encode()),
    ]
    await producer.send_and_wait(topic, message.value, key=message.key, headers=headers)
