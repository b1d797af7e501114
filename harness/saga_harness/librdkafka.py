"""One record produced by a client that is not ours: librdkafka (the confluent-kafka wheel; kcat is librdkafka too,
but Debian 12's links 2.0, whose SCRAM Kafka 4 refuses). The operator and the SDK both use aiokafka: what they
make of a record another client wrote (each compression codec, a record the consumer cannot read) is tested with
this.

The producer is the one docs/protocol.md asks of an implementation (§3.1, §16): Kafka's murmur2 partitioner (so
a record keyed by a saga uid lands on the partition aiokafka's producers use for that saga), idempotence on
(acks=all). Each call sends one record in a batch of its own (`linger.ms=0`), compressed with `codec`.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import Producer

#: A record as saga_protocol's encoders return it (`encode_command`, `encode_reply`): (key, value, headers).
Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


class NotDelivered(RuntimeError):
    """The broker refused the record, or did not acknowledge it in time."""


def produce(config: Mapping[str, str], topic: str, record: Record, codec: str = "none", timeout: float = 60.0) -> None:
    """Produce `record` on `topic` with librdkafka `config` (`kafka_access.librdkafka_config(endpoints)`: the
    admin), compressed with `codec` (none, gzip, snappy, lz4, zstd). Returns once the broker has acknowledged
    it; NotDelivered if it refused it or `timeout` seconds passed first. Blocking: from a coroutine, run it in
    a thread (`asyncio.to_thread`)."""
    key, value, headers = record
    producer = Producer(
        {
            **config,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "compression.type": codec,
            "linger.ms": 0,
            "log_level": 0,
        }
    )
    failures: list[object] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(error)

    named: list[tuple[str, str | bytes | None]] = list(headers)
    producer.produce(topic, value, key, headers=named, on_delivery=delivered)
    if producer.flush(timeout) != 0:
        raise NotDelivered(f"a record for {topic} not delivered within {timeout} s")
    if failures:
        raise NotDelivered(f"a record for {topic} refused: {failures}")
