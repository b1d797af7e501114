"""Helpers shared by the participant tests: commands, a tiny saga coordinator, a Kafka harness."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from saga_participants import KafkaSettings, Participant, testing
from saga_protocol import Command, CommandKind, DecodeError, Reply, decode_reply, encode_command

WAIT = 60.0  # seconds a test waits for something that should happen: a failure, never a measurement


def unique(prefix: str) -> str:
    """A DNS-label name no other test (or the demo on the same broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_command(
    *,
    kind: CommandKind = CommandKind.ACTION,
    action: str = "debit",
    saga_uid: str | None = None,
    step: str = "debit-buyer",
    attempt: int = 1,
    payload: dict[str, Any] | None = None,
    reply_topic: str | None = None,
    key: str | None = None,
    participant: str | None = None,
    namespace: str = "default",
) -> Command:
    """saga_participants.testing.make_command with this suite's defaults (a debit); `key`: the idempotency key."""
    return testing.make_command(
        kind=kind,
        action=action,
        saga_uid=saga_uid,
        step=step,
        attempt=attempt,
        payload=payload,
        reply_topic=reply_topic,
        participant=participant,
        namespace=namespace,
        idempotency_key=key,
        saga_name=f"buy-{(saga_uid or uuid.uuid4().hex)[:8]}",
    )


def compensation_of(command: Command, action: str, attempt: int = 1) -> Command:
    """The compensation command for the same step (same idempotency key), as the operator sends it."""
    return testing.compensation_of(command, action, attempt=attempt)


def order(buyer: str = "alice", video: str = "v-42", price: int = 1500, agent: str = "bob-agency") -> dict[str, Any]:
    return {"buyer": buyer, "video": video, "price": price, "agent": agent}


#: The buy-video saga: (participant, step, action, compensation), in order.
BUY_VIDEO_STEPS = (
    ("videos", "record-purchase", "record-purchase", "remove-purchase"),
    ("users", "debit-buyer", "debit", "refund"),
    ("agents", "credit-agent", "credit", "reverse-credit"),
)


class KafkaHarness:
    """Drives participants over a real broker: produces commands, collects replies and dead letters.

    ``settings`` are the admin's (conftest.py's ``participants_kafka``): the harness's own clients use them,
    and so do the participants under test (``Participant(..., kafka=harness.settings)``), which these
    tests are not about the ACLs of (tests/security and the worlds run each as its own principal)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.bootstrap_servers = settings.bootstrap_servers
        self.reply_topic = unique("saga.replies.test")
        self.replies: list[Reply] = []
        self.arrived: dict[str, float] = {}  # reply message id -> time.monotonic() when it was read
        self._producer: AIOKafkaProducer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._participants: list[tuple[Participant, asyncio.Task[None]]] = []

    async def __aenter__(self) -> KafkaHarness:
        await self.create_topic(self.reply_topic)
        self._producer = AIOKafkaProducer(**self.options(), enable_idempotence=True, acks="all")
        await self._producer.start()
        self._reader = asyncio.create_task(self._read_replies())
        return self

    def options(self) -> dict[str, Any]:
        """aiokafka keyword arguments, ``bootstrap_servers`` included."""
        return self.settings.client_options()

    def env(self) -> dict[str, str]:
        """The same as ``KAFKA_*`` variables, for a participant run as a process."""
        return kafka_env(self.settings)

    def librdkafka_config(self) -> dict[str, str]:
        """The same for a librdkafka client (confluent-kafka)."""
        s = self.settings
        config = {"bootstrap.servers": s.bootstrap_servers, "security.protocol": s.security_protocol}
        if s.security_protocol.startswith("SASL_"):
            config |= {"sasl.mechanisms": s.sasl_mechanism, "sasl.username": s.sasl_username or ""}
            config["sasl.password"] = s.password() or ""
        if s.ssl_ca_file is not None:
            config["ssl.ca.location"] = str(s.ssl_ca_file)
        return config

    async def __aexit__(self, *_: object) -> None:
        for participant, _task in self._participants:
            participant.stop()
        for _participant, task in self._participants:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, WAIT)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._producer is not None:
            await self._producer.stop()

    async def create_topic(self, topic: str) -> None:
        admin = AIOKafkaAdminClient(**self.options())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()

    async def _read_replies(self) -> None:
        consumer = AIOKafkaConsumer(self.reply_topic, **self.options(), auto_offset_reset="earliest")
        await consumer.start()
        try:
            async for record in consumer:
                try:
                    reply = decode_reply(record.value, list(record.headers))
                    self.arrived[reply.message_id] = time.monotonic()
                    self.replies.append(reply)
                except DecodeError as exc:  # a participant produced garbage: make the test see it
                    self.replies.append(exc)  # type: ignore[arg-type]
        finally:
            await consumer.stop()

    async def start(self, participant: Participant) -> Participant:
        """Run a participant in this event loop until the harness closes; returns once it consumes."""
        task = asyncio.create_task(participant.run(install_signal_handlers=False))
        self._participants.append((participant, task))
        await until(lambda: participant.ready or task.done(), what=f"{participant.name} to be ready")
        if task.done():
            task.result()  # raises what run() raised
        return participant

    async def stop(self, participant: Participant) -> None:
        participant.stop()
        for p, task in self._participants:
            if p is participant:
                await asyncio.wait_for(task, WAIT)

    async def send(self, command: Command, topic: str) -> None:
        assert self._producer is not None
        key, value, headers = encode_command(command.model_copy(update={"reply_topic": self.reply_topic}))
        await self._producer.send_and_wait(topic, value, key=key, headers=headers)

    async def send_raw(
        self, topic: str, value: bytes, key: bytes | None = b"raw", headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(topic, value, key=key, headers=headers or [])

    def with_reply_topic(self, command: Command) -> Command:
        return command.model_copy(update={"reply_topic": self.reply_topic})

    async def replies_for(self, command: Command, count: int = 1) -> list[Reply]:
        """The first `count` replies to (idempotency key, kind) of `command`, waiting for them."""

        def matching() -> list[Reply]:
            for reply in self.replies:
                if not isinstance(reply, Reply):
                    raise AssertionError(f"undecodable reply on {self.reply_topic}: {reply}")
            return [r for r in self.replies if r.idempotency_key == command.idempotency_key and r.kind == command.kind]

        await until(lambda: len(matching()) >= count, what=f"{count} replies to {command.kind} {command.action}")
        return matching()[:count]

    async def reply_to(self, command: Command) -> Reply:
        return (await self.replies_for(command))[0]

    async def read_topic(self, topic: str, count: int) -> list[Any]:
        """The first `count` records of a topic (from the beginning), waiting for them."""
        consumer = AIOKafkaConsumer(topic, **self.options(), auto_offset_reset="earliest")
        await consumer.start()
        records: list[Any] = []
        try:
            async with asyncio.timeout(WAIT):
                while len(records) < count:
                    batch = await consumer.getmany(timeout_ms=500)
                    for part in batch.values():
                        records.extend(part)
        finally:
            await consumer.stop()
        return records[:count]


async def until(condition: Callable[[], bool], *, what: str, seconds: float = WAIT) -> None:
    """Wait for a condition; failing (not measuring) when it does not come within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            # Polling: the conditions are about other tasks' state (replies collected, a participant
            # ready) that offers no event to wait on.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}") from None


def headers_of(record: Any) -> dict[str, str]:
    return {name: bytes(value).decode() for name, value in record.headers}


def kafka_env(settings: KafkaSettings) -> dict[str, str]:
    """``KAFKA_<FIELD>`` for every field of ``settings`` that is set (what KafkaSettings reads back)."""
    env: dict[str, str] = {}
    for field, value in settings.model_dump(exclude_none=True).items():
        env[f"KAFKA_{field.upper()}"] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return env
