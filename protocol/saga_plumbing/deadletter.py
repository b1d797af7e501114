"""The dead-letter writer: one header set for every dead-letter topic (docs/protocol.md, "Dead letters").

A dead letter is the original record's bytes, key unchanged, with these headers first and the original
headers after them. Header values are UTF-8: reason and detail as text, partition and offset as decimal
ASCII integers, time as RFC 3339 UTC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from aiokafka.errors import MessageSizeTooLargeError

from saga_plumbing.kafka import TRANSIENT_KAFKA_ERRORS
from saga_plumbing.retry import Backoff, retry_transient

log = logging.getLogger(__name__)

DLQ_REASON: Final = "dlq_reason"  # a reason code, e.g. NotJson (docs/protocol.md lists them all)
DLQ_DETAIL: Final = "dlq_detail"  # what exactly was wrong, for a person (at most 4 KiB)
DLQ_SOURCE: Final = "dlq_source"  # who set it aside: saga-operator, or the participant's name
DLQ_ORIGINAL_TOPIC: Final = "dlq_topic"
DLQ_ORIGINAL_PARTITION: Final = "dlq_partition"
DLQ_ORIGINAL_OFFSET: Final = "dlq_offset"
DLQ_TIME: Final = "dlq_time"
DLQ_TRUNCATED: Final = "dlq_truncated"  # "true" when the value was cut to fit the dead-letter topic

DETAIL_LIMIT: Final = 4096
TRUNCATED_VALUE_LIMIT: Final = 512 * 1024

Header = tuple[str, bytes | None]


class Record(Protocol):
    """What a dead letter needs of a consumed record (aiokafka's ConsumerRecord has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


class Producer(Protocol):
    async def send_and_wait(
        self, topic: str, value: bytes | None = ..., key: bytes | None = ..., headers: list[Header] | None = ...
    ) -> Any: ...


def dead_letter_headers(record: Record, reason: str, detail: str, source: str) -> list[Header]:
    return [
        (DLQ_REASON, reason.encode()),
        (DLQ_DETAIL, detail[:DETAIL_LIMIT].encode()),
        (DLQ_SOURCE, source.encode()),
        (DLQ_ORIGINAL_TOPIC, record.topic.encode()),
        (DLQ_ORIGINAL_PARTITION, str(record.partition).encode()),
        (DLQ_ORIGINAL_OFFSET, str(record.offset).encode()),
        (DLQ_TIME, datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()),
        # A header value can be null on the wire: kept as it came.
        *[(name, None if raw is None else bytes(raw)) for name, raw in (record.headers or ())],
    ]


class DeadLetterWriter:
    """Sets records aside on one dead-letter topic. Retries an outage until the broker takes the record: the
    caller commits the original's offset only after `write` returns, so giving up would lose the message. A
    refusal that needs a person (a missing ACL, say) raises, and the original stays uncommitted."""

    def __init__(self, producer: Producer, topic: str, source: str, *, stop: asyncio.Event | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.source = source
        self._stop = stop

    async def write(self, record: Record, reason: str, detail: str) -> None:
        # A null value (a tombstone, an empty message) stays null: the bytes are the original's, unchanged.
        # Without a key too, zero bytes: a producer refuses a record with neither (aiokafka asserts), and
        # the write would fail for ever, stalling the partition behind it.
        value = b"" if record.value is None and record.key is None else record.value
        headers = dead_letter_headers(record, reason, detail, self.source)

        async def send() -> None:
            nonlocal value
            try:
                await self.producer.send_and_wait(self.topic, value, key=record.key, headers=headers)
            except MessageSizeTooLargeError:
                # The original fit where it came from but not with our headers: keep its beginning.
                if value is None or (DLQ_TRUNCATED, b"true") in headers:
                    raise
                value = value[:TRUNCATED_VALUE_LIMIT]
                headers.append((DLQ_TRUNCATED, b"true"))
                await self.producer.send_and_wait(self.topic, value, key=record.key, headers=headers)

        await retry_transient(
            f"dead-lettering {record.topic}:{record.partition}@{record.offset} to {self.topic}",
            send,
            transient=TRANSIENT_KAFKA_ERRORS,
            backoff=Backoff(initial=0.2, maximum=10.0),
            stop=self._stop,
        )
