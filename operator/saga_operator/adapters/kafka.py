"""The Kafka side: the command producer and the reply consumer. Topic creation, the dead-letter writer,
the client settings (security included) and the retry rules are saga_plumbing's.

Settings that the defaults get wrong for a saga coordinator: the producer is idempotent with
acks=all (a command acknowledged is a command on every in-sync replica, never duplicated by the
client's own retries); the consumer does not auto-commit (offsets are committed by the runtime
*after* the status write that applies the reply) and starts from the earliest offset (a reply that
arrived while the operator was down must still be applied).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from saga_plumbing import KafkaSettings
from saga_protocol import Command, encode_command, operator_source


def client_id(kafka: KafkaSettings) -> str:
    """The name in the brokers' logs and quotas: KAFKA_CLIENT_ID, else saga-operator."""
    return kafka.client_id or "saga-operator"


def new_producer(kafka: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka.client_options(client_id(kafka)),
        enable_idempotence=True,
        acks="all",
        linger_ms=1,
        request_timeout_ms=15000,
    )


#: How often the consumer asks for the cluster's metadata: a reply topic the admin creates after the operator
#: subscribed to it is read within this (and a rebalance) instead of the client's default five minutes.
METADATA_MAX_AGE_MS = 5000


def new_reply_consumer(
    kafka: KafkaSettings,
    group: str,
    *,
    assignor: Any = None,
    session_timeout_seconds: float = 10.0,
    heartbeat_seconds: float = 3.0,
) -> AIOKafkaConsumer:
    """Subscribed by the reply pump, to `saga.replies.<p>` for each participant it follows. `assignor`: the
    group's assignment strategy (adapters.shards.ShardAssignor for sharded replicas; Kafka's range otherwise)."""
    strategy: dict[str, Any] = {} if assignor is None else {"partition_assignment_strategy": (assignor,)}
    return AIOKafkaConsumer(
        **kafka.client_options(client_id(kafka)),
        **strategy,
        group_id=group,
        session_timeout_ms=int(session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(heartbeat_seconds * 1000),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        # A slow API server must not cost the group membership.
        max_poll_interval_ms=600_000,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        isolation_level="read_committed",
    )


async def send_command(
    producer: AIOKafkaProducer, topic: str, command: Command, trace: Mapping[str, str] | None = None
) -> None:
    """Produce `command`, with the trace-context headers of `trace` (docs/protocol.md §5.1) when given."""
    key, value, headers = encode_command(command, source=operator_source(command.saga_namespace), trace=trace)
    await producer.send_and_wait(topic, value, key=key, headers=headers)
