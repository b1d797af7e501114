"""Re-delivery: copies of real commands and replies produced again onto their partitions."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..topics import KafkaClient, header, options, partitions_of
from .aio import sleep_or_stop
from .malformed import MARKER


class Redeliverer:
    """Reads the real commands and replies back and produces copies of some of them onto the same
    partition: the at-least-once delivery every participant and the operator must absorb."""

    def __init__(self, kafka: KafkaClient, topics: Mapping[str, str], rng: random.Random) -> None:
        #: topic -> "commands" or "replies"
        self.topics = dict(topics)
        #: as whom it reads and writes (the admin: ``kafka_access.client_options``)
        self.kafka = kafka
        self.rng = rng
        self.seen: dict[str, list[Any]] = defaultdict(list)
        self.copies: Counter[str] = Counter()
        self.failures = 0
        self.errors: list[str] = []

    async def run(self, stop: asyncio.Event, every: float) -> None:
        tps = await partitions_of(self.kafka, list(self.topics))
        producer = AIOKafkaProducer(**options(self.kafka), acks="all", request_timeout_ms=10_000)
        await producer.start()
        reader = asyncio.create_task(self._read(tps, stop), name="redeliverer-reader")
        try:
            while not await sleep_or_stop(stop, every):
                await self._copy_one(producer)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _read(self, tps: list[TopicPartition], stop: asyncio.Event) -> None:
        """Keep the latest messages of each topic at hand. A consumer that stops answering (it happens
        to aiokafka's after the broker came back) is replaced by a fresh one."""
        while not stop.is_set():
            consumer = AIOKafkaConsumer(**options(self.kafka), enable_auto_commit=False)
            try:
                await consumer.start()
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                while not stop.is_set():
                    batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500, max_records=500), timeout=10)
                    for messages in batch.values():
                        for record in messages:
                            if header(record, MARKER) is None and record.value is not None:
                                pool = self.seen[record.topic]
                                pool.append(record)
                                if len(pool) > 400:
                                    del pool[: len(pool) - 400]
            except Exception as exc:
                self.errors.append(f"reader: {type(exc).__name__}: {exc}")
                await sleep_or_stop(stop, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _copy_one(self, producer: AIOKafkaProducer) -> None:
        topics = [t for t, pool in self.seen.items() if pool]
        if not topics:
            return
        topic = self.rng.choice(topics)
        record = self.rng.choice(self.seen[topic])
        try:
            await asyncio.wait_for(
                producer.send_and_wait(
                    record.topic,
                    record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=list(record.headers or ()),  # aiokafka takes a list, a consumer gives a tuple
                ),
                timeout=15,
            )
        except Exception as exc:
            self.failures += 1  # the broker is down: this copy may or may not exist; nothing depends on it
            self.errors.append(f"copy: {type(exc).__name__}: {exc}")
            return
        self.copies[self.topics[topic]] += 1
