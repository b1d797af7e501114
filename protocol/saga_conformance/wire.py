"""The kit's Kafka side: one producer, one group-less consumer that records everything arriving on the
participant's reply topic, its dead-letter topic and the foreign reply topic, from the moment the kit
started (older records are not the kit's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from saga_plumbing import KafkaSettings, TopicSpec, ensure_topics
from saga_protocol import DEAD_LETTER_PARTITIONS, DecodeError, Reply, decode_reply

log = logging.getLogger(__name__)
Headers = list[tuple[str, bytes | None]]


class KitError(RuntimeError):
    """The kit cannot run (broker unreachable, topics missing): exit status 2, no verdicts."""


@dataclass(frozen=True)
class Seen:
    """One record the kit read, with its reply decoded when it is on a reply topic and decodes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    at: float
    reply: Reply | None = None
    decode_error: DecodeError | None = None

    def header(self, name: str) -> bytes | None:
        return next((raw for key, raw in self.headers if key == name), None)

    @property
    def saga_uid(self) -> str | None:
        if self.reply is not None:
            return self.reply.saga_uid
        return None if self.key is None else self.key.decode(errors="replace")


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int
    at: float


class Wire:
    def __init__(self, kafka: KafkaSettings, *, read: Sequence[str], reply_topics: Sequence[str]) -> None:
        self.kafka = kafka
        self.read = list(dict.fromkeys(read))
        self.reply_topics = set(reply_topics)
        self.seen: list[Seen] = []
        self.partitions: dict[str, int] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def ensure(self, topics: dict[str, int], create: bool) -> None:
        """Create what is missing (when allowed), then require every topic to exist."""
        if create:
            try:
                specs = [TopicSpec(name, n) for name, n in topics.items()]
                await ensure_topics(self.kafka, specs, client_id="saga-conformance")
            except Exception as exc:  # an ACL refusal, say: the admin may have created them
                log.warning("could not create topics (%s: %s); checking that they exist", type(exc).__name__, exc)

    async def start(self, topics: Sequence[str]) -> None:
        options = self.kafka.client_options("saga-conformance")
        self._producer = AIOKafkaProducer(**options, enable_idempotence=True, acks="all", max_request_size=2**21)
        self._consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
        try:
            await self._producer.start()
            await self._consumer.start()
            await self._layout(topics)
            assigned = [TopicPartition(t, p) for t in self.read for p in range(self.partitions[t])]
            self._consumer.assign(assigned)
            await self._consumer.seek_to_end(*assigned)
            for tp in assigned:  # resolve the positions now: what arrives later is the kit's to see
                await self._consumer.position(tp)
        except KitError:
            await self.stop()
            raise
        except Exception as exc:
            await self.stop()
            raise KitError(f"cannot use the broker at {self.kafka.bootstrap_servers}: {exc!r}") from exc
        self._task = asyncio.create_task(self._pump(), name="conformance-reader")

    async def _layout(self, topics: Sequence[str], patience: float = 15.0) -> None:
        """Partition counts of `topics`; metadata of a topic just created may take a moment to appear."""
        assert self._consumer is not None and self._producer is not None
        deadline = time.monotonic() + patience
        while True:
            existing = await self._consumer.topics()
            counts = {t: len(await self._producer.partitions_for(t)) if t in existing else 0 for t in topics}
            missing = sorted(t for t, n in counts.items() if n == 0)
            if not missing:
                self.partitions.update(counts)
                return
            if time.monotonic() > deadline:
                raise KitError(f"topics missing (the admin creates them): {', '.join(missing)}")
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._consumer = self._producer = None

    async def _pump(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    self.seen.append(self._seen(r))
            if batch:
                self._arrived.set()

    def _seen(self, r: Any) -> Seen:
        headers: Headers = [(k, None if v is None else bytes(v)) for k, v in (r.headers or ())]
        reply = error = None
        if r.topic in self.reply_topics:
            try:
                reply = decode_reply(r.value, headers)
            except DecodeError as exc:
                error = exc
        return Seen(r.topic, r.partition, r.offset, r.key, r.value, headers, time.monotonic(), reply, error)

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> Sent:
        assert self._producer is not None
        wire_headers = [(k, v if v is not None else b"") for k, v in headers]
        meta = await self._producer.send_and_wait(topic, value, key=key, headers=wire_headers)
        return Sent(topic, meta.partition, meta.offset, time.monotonic())

    def matching(self, topic: str, test: Callable[[Seen], bool]) -> list[Seen]:
        return [s for s in self.seen if s.topic == topic and test(s)]

    async def wait(self, topic: str, test: Callable[[Seen], bool], count: int, within: float) -> list[Seen]:
        """Records on `topic` passing `test`, once there are `count` of them or `within` seconds passed."""
        deadline = time.monotonic() + within
        while True:
            found = self.matching(topic, test)
            remaining = deadline - time.monotonic()
            if len(found) >= count or remaining <= 0:
                return found
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.5))

    async def settle(
        self, topic: str, test: Callable[[Seen], bool], count: int, within: float, quiet: float
    ) -> list[Seen]:
        """Like wait, then `quiet` seconds more: what else arrives for the same test is reported too."""
        await self.wait(topic, test, count, within)
        await asyncio.sleep(quiet)
        return self.matching(topic, test)


def topic_layout(participant_topics: dict[str, int], dead_letters: Sequence[str]) -> dict[str, int]:
    return {**participant_topics, **{t: DEAD_LETTER_PARTITIONS for t in dead_letters}}
