"""What the rules share: the configuration, the wire, the participant process, sagas and reply checks."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from saga_conformance.config import FOREIGN_REPLY_TOPIC, KitConfig
from saga_conformance.process import ParticipantProcess
from saga_conformance.wire import Headers, KitError, Seen, Sent, Wire
from saga_protocol import (
    REPLY_TYPE,
    SPEC_VERSION,
    Command,
    CommandKind,
    command_id,
    command_topic,
    dead_letter_topic,
    encode_command,
    idempotency_key,
    participant_source,
    partition_for,
)

STEP = "conformance-step"
PROBE_ACTION = "conformance-probe-no-such-handler"


@dataclass
class Saga:
    uid: str
    kit: Kit

    def command(self, kind: CommandKind, attempt: int = 1, **changes: Any) -> Command:
        cfg = self.kit.cfg
        fields: dict[str, Any] = dict(
            message_id=command_id(self.uid, STEP, kind, attempt),
            saga_uid=self.uid,
            saga_namespace=cfg.namespace,
            saga_name=f"conformance-{self.uid[:8]}",
            step=STEP,
            kind=kind,
            action=cfg.action if kind is CommandKind.ACTION else cfg.compensation,
            attempt=attempt,
            idempotency_key=idempotency_key(self.uid, STEP),
            payload=dict(cfg.payload),
            reply_topic=cfg.trusted_reply_topic,
            sent_at=datetime.now(UTC),
        )
        fields.update(changes)
        return Command(**fields)


@dataclass(frozen=True)
class Record:
    """A record as the kit sent it, so that it can be sent again byte for byte."""

    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass
class Applied:
    """A saga whose action the participant applied (shared by the rules that build on it)."""

    saga: Saga
    command: Command
    record: Record
    first: Seen


@dataclass
class Kit:
    cfg: KitConfig
    wire: Wire
    process: ParticipantProcess | None = None
    applied: Applied | None = None
    dead_letters_sent: list[tuple[Sent, Record, str]] = field(default_factory=list)

    @property
    def command_topic(self) -> str:
        return command_topic(self.cfg.participant)

    @property
    def dlq_topic(self) -> str:
        return dead_letter_topic(self.command_topic)

    @property
    def reply_topic(self) -> str:
        return self.cfg.trusted_reply_topic

    def new_saga(self, avoid_partition: int | None = None) -> Saga:
        partitions = self.wire.partitions.get(self.command_topic, 1)
        while True:
            uid = str(uuid.uuid4())
            if avoid_partition is None or partitions < 2 or self.partition_of(uid) != avoid_partition:
                return Saga(uid, self)

    def partition_of(self, uid: str) -> int:
        return partition_for(uid.encode(), self.wire.partitions.get(self.command_topic, 1))

    @staticmethod
    def record_of(command: Command) -> Record:
        key, value, headers = encode_command(command)
        return Record(key, value, list(headers))

    async def send(self, command: Command) -> tuple[Sent, Record]:
        record = self.record_of(command)
        return await self.send_record(record), record

    async def send_record(self, record: Record) -> Sent:
        return await self.wire.send(self.command_topic, record.key, record.value, record.headers)

    def replies_of(self, uid: str) -> list[Seen]:
        return self.wire.matching(self.reply_topic, lambda s: s.saga_uid == uid)

    async def replies(self, uid: str, count: int, *, within: float | None = None, settle: bool = True) -> list[Seen]:
        """Every reply for saga `uid` once there are `count` (or the timeout passed), after a quiet period."""
        timeout = self.cfg.reply_timeout if within is None else within
        test = lambda s: s.saga_uid == uid  # noqa: E731
        if settle:
            return await self.wire.settle(self.reply_topic, test, count, timeout, self.cfg.quiet)
        return await self.wire.wait(self.reply_topic, test, count, timeout)

    async def dead_letters(self, key: bytes | None, *, settle: bool = False) -> list[Seen]:
        test = lambda s: s.key == key  # noqa: E731
        if settle:
            return await self.wire.settle(self.dlq_topic, test, 1, self.cfg.reply_timeout, self.cfg.quiet)
        return await self.wire.wait(self.dlq_topic, test, 1, self.cfg.reply_timeout)

    def foreign_replies(self, uid: str) -> list[Seen]:
        return self.wire.matching(FOREIGN_REPLY_TOPIC, lambda s: s.key == uid.encode())

    async def ready(self) -> None:
        """Until the participant answers (a reply or a dead letter) an effect-free probe: a command for a
        handler it does not have. Probes are sent every 3 s; a participant process that exits is an error."""
        deadline = time.monotonic() + self.cfg.start_timeout
        probes: set[bytes] = set()
        while time.monotonic() < deadline:
            if self.process is not None and not self.process.running:
                raise KitError(f"the participant exited ({self.process.exit_code}):\n{self.process.tail()}")
            saga = self.new_saga()
            command = saga.command(CommandKind.ACTION, action=PROBE_ACTION)
            await self.send(command)
            probes.add(saga.uid.encode())
            for _ in range(30):
                if any(s.key in probes for s in self.wire.seen):
                    return
                await asyncio.sleep(0.1)
        tail = f":\n{self.process.tail()}" if self.process is not None else ""
        raise KitError(f"the participant did not answer a probe within {self.cfg.start_timeout:.0f}s{tail}")

    def shape(self, seen: Seen, command: Command) -> list[str]:
        """What is wrong with `seen` as the reply to `command` (empty: nothing)."""
        if seen.reply is None:
            error = seen.decode_error
            return [f"the reply does not decode: {error.reason}: {error.detail}" if error else "no reply"]
        reply, problems = seen.reply, []
        expected_headers = {
            "ce_specversion": SPEC_VERSION,
            "ce_type": REPLY_TYPE,
            "ce_id": reply.message_id,
            "ce_source": participant_source(self.cfg.participant),
            "ce_subject": command.step,
            "content-type": "application/json",
        }
        for name, want in expected_headers.items():
            got = seen.header(name)
            if got != want.encode():
                problems.append(f"header {name} is {got!r}, expected {want!r}")
        problems += _time_problems(seen.header("ce_time"))
        if seen.key != command.saga_uid.encode():
            problems.append(f"key {seen.key!r} is not the saga uid")
        partitions = self.wire.partitions.get(self.reply_topic, 1)
        expected = partition_for(command.saga_uid.encode(), partitions)
        if seen.partition != expected:
            problems.append(f"partition {seen.partition}, murmur2 of the key gives {expected} of {partitions}")
        echoes = {
            "commandId": (reply.command_id, command.message_id),
            "sagaUid": (reply.saga_uid, command.saga_uid),
            "step": (reply.step, command.step),
            "kind": (reply.kind, command.kind),
            "attempt": (reply.attempt, command.attempt),
            "idempotencyKey": (reply.idempotency_key, command.idempotency_key),
            "participant": (reply.participant, self.cfg.participant),
        }
        problems += [f"{name} is {got!r}, expected {want!r}" for name, (got, want) in echoes.items() if got != want]
        return problems


def _time_problems(raw: bytes | None) -> list[str]:
    if raw is None:
        return ["header ce_time is missing"]
    try:
        moment = datetime.fromisoformat(raw.decode())
    except ValueError:
        return [f"header ce_time {raw!r} is not RFC 3339"]
    if moment.utcoffset() is None:
        return [f"header ce_time {raw!r} has no UTC offset"]
    return []


def describe(seen: Seen) -> str:
    if seen.reply is None:
        return "undecodable reply"
    r = seen.reply
    reason = f" {r.error.reason}" if r.error else ""
    return f"{r.kind.value} attempt {r.attempt}: {r.outcome.value}{reason}{' (duplicate)' if r.duplicate else ''}"
