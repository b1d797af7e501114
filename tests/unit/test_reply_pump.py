"""The reply pump (runtime/replies.py) against the coordinator on its in-memory fakes and a fake consumer.

What is under test: every reply lands under exactly one reason in exactly one counter (dead-lettered ones in
saga_operator_malformed_messages_total, ignored ones in saga_operator_replies_ignored_total); one saga whose
status write hangs delays no other saga's reply, and offsets are committed only up to the lowest record not
yet done; a record the client cannot read is dead-lettered Undecodable and sought past, and the records that
aiokafka drained from other partitions in the failed call are not lost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException
from fakes import FakeSender, FakeStore

from saga_operator.adapters.kube import SagaRef
from saga_operator.domain.model import Phase, SagaSpec, SagaStatus, StepSpec
from saga_operator.runtime.coordinator import Coordinator, SagaEntry
from saga_operator.runtime.metrics import Metrics
from saga_operator.runtime.replies import ReplyPump, _Partition
from saga_protocol import (
    Command,
    CommandKind,
    ErrorInfo,
    Outcome,
    Reply,
    answer,
    command_id,
    encode_reply,
    reply_topic,
)
from saga_protocol.reasons import REASONS

SPEC = SagaSpec(
    steps=[
        StepSpec(name="reserve", participant="stock", action="reserve", compensation="release"),
        StepSpec(name="charge", participant="payments", action="charge", compensation="refund"),
    ],
    payload={"order": "o-1"},
)
PARTICIPANTS = {step.name: step.participant for step in SPEC.steps}


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = field(default_factory=list)


class FakeDeadLetters:
    def __init__(self) -> None:
        self.written: list[tuple[Any, str, str]] = []

    async def write(self, record: Any, reason: str, detail: str) -> None:
        self.written.append((record, reason, detail))


class FakeConsumer:
    """Partitions as lists of records (or of the exception reading that offset raises), read as aiokafka does:
    a call drains partition after partition, moving each one's position on; an unreadable record raises out
    of the call, and what the call drained before it is gone, positions moved."""

    def __init__(self, logs: dict[TopicPartition, list[Any]]) -> None:
        self.logs = logs
        self.positions = dict.fromkeys(logs, 0)
        self.commits: list[dict[TopicPartition, int]] = []
        self.topics: list[str] = []

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.topics = list(topics)

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        out: dict[TopicPartition, list[Any]] = {}
        for tp in tps or sorted(self.logs):
            log, position = self.logs[tp], self.positions[tp]
            got: list[Any] = []
            while position < len(log) and (max_records is None or len(got) < max_records):
                entry = log[position]
                if isinstance(entry, Exception):
                    raise entry
                got.append(entry)
                position += 1
            self.positions[tp] = position
            if got:
                out[tp] = got
        if not out:
            await asyncio.sleep(0.01)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def committed(self, tp: TopicPartition) -> int | None:
        found = [c[tp] for c in self.commits if tp in c]
        return found[-1] if found else None


async def _retry(what: str, attempt: Callable[[], Awaitable[Any]], transient: Any) -> Any:
    return await attempt()


@dataclass
class Rig:
    store: FakeStore
    sender: FakeSender
    coordinator: Coordinator
    metrics: Metrics
    dead: FakeDeadLetters
    pump: ReplyPump

    def counted(self, counter: str, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(counter, {"reason": reason})
        return value or 0.0

    async def start(self, name: str) -> SagaRef:
        ref = self.store.create(name, SPEC)
        await self.coordinator.observe(self.store.body(ref), "ADDED")
        return ref

    def last_command(self, ref: SagaRef) -> Command:
        return [s.command for s in self.sender.sent if s.command.saga_uid == ref.uid][-1]


def make_rig(consumer: Any = None) -> Rig:
    store = FakeStore()
    sender = FakeSender(store)
    metrics = Metrics()
    coordinator = Coordinator(store, sender.send, sender.ensure_topics, metrics, max_backoff_seconds=1)
    dead = FakeDeadLetters()
    pump = ReplyPump(consumer or FakeConsumer({}), coordinator, dead, metrics, _retry, step_wait_ms=10)
    return Rig(store, sender, coordinator, metrics, dead, pump)


def record(
    reply: Reply, *, topic: str | None = None, key: bytes | None = None, partition: int = 0, offset: int = 0
) -> Rec:
    k, value, headers = encode_reply(reply)
    return Rec(topic or reply_topic(reply.participant), partition, offset, k if key is None else key, value, headers)


def reply_to(command: Command, outcome: Outcome = Outcome.SUCCEEDED) -> Reply:
    error = ErrorInfo(reason="OutOfStock") if outcome is not Outcome.SUCCEEDED else None
    return answer(command, PARTICIPANTS[command.step], outcome, error=error)


def forged(reply: Reply, **update: Any) -> Reply:
    return reply.model_copy(update=update)


# ---- one reason, one counter ------------------------------------------------------------------------


async def test_every_reason_lands_in_exactly_one_counter() -> None:
    rig = make_rig()
    ref = await rig.start("order-1")
    first = reply_to(rig.last_command(ref))
    cases: dict[str, Rec] = {
        "EmptyMessage": Rec("saga.replies.stock", 0, 0, ref.uid.encode(), b""),
        "NotJson": Rec("saga.replies.stock", 0, 0, ref.uid.encode(), b"{not json"),
        "WrongType": Rec("saga.replies.stock", 0, 0, ref.uid.encode(), b"{}", [("ce_type", b"dev.saga.reply.v1")]),
        "UnknownSaga": record(forged(first, saga_uid=str(uuid.uuid4()))),
        "UnknownStep": record(forged(first, step="nope", idempotency_key=f"{ref.uid}/nope")),
        "WrongReplyTopic": record(first, topic="saga.replies.payments"),
        "ParticipantMismatch": record(forged(first, participant="payments"), topic="saga.replies.stock"),
        "IdempotencyKeyMismatch": record(forged(first, idempotency_key=f"{ref.uid}/charge")),
        "KeyMismatch": record(first, key=b"someone-else"),
        "CommandIdMismatch": record(forged(first, command_id=str(uuid.uuid4()))),
        "CompensationNotSent": record(
            forged(first, kind=CommandKind.COMPENSATION, command_id=command_id(ref.uid, "reserve", "compensation", 1))
        ),
        "FutureAttempt": record(forged(first, attempt=2, command_id=command_id(ref.uid, "reserve", "action", 2))),
    }
    for case in cases.values():
        await rig.pump.handle(case)
    # The first reply applies; sent again it is a Duplicate.
    await rig.pump.handle(record(first))
    await rig.pump.handle(record(first))
    # charge refused: reserve is being compensated, so its action's answer (a replay) is Late.
    await rig.pump.handle(record(reply_to(rig.last_command(ref), Outcome.FAILED)))
    await rig.pump.handle(record(forged(first, duplicate=True)))
    # The compensation succeeds: the saga is Compensated, and any action answer now is SagaFinished.
    await rig.pump.handle(record(reply_to(rig.last_command(ref))))
    assert rig.store.status(ref).phase == Phase.COMPENSATED
    await rig.pump.handle(record(forged(first, duplicate=True)))
    # A saga whose spec cannot be read, and one not started yet.
    invalid = rig.store.create("order-2", SPEC)
    body = rig.store.body(invalid)
    body["spec"] = {"steps": []}
    rig.coordinator.sagas[invalid.uid] = SagaEntry.from_body(body)
    await rig.pump.handle(record(forged(first, saga_uid=invalid.uid, idempotency_key=f"{invalid.uid}/reserve")))
    pending = rig.store.create("order-3", SPEC)
    rig.coordinator.sagas[pending.uid] = SagaEntry.from_body(rig.store.body(pending))
    await rig.pump.handle(record(forged(first, saga_uid=pending.uid, idempotency_key=f"{pending.uid}/reserve")))
    # A reply that passes every check, and whose status write fails for good.
    other = await rig.start("order-4")
    rig.store.status_write_errors.append(RuntimeError("the API server refused it"))
    await rig.pump.handle(record(reply_to(rig.last_command(other))))

    expected_dead = [*cases, "InvalidSaga", "SagaNotStarted", "NotApplied"]
    expected_ignored = ["Duplicate", "Late", "SagaFinished"]
    assert sorted(reason for _, reason, _ in rig.dead.written) == sorted(expected_dead)
    handling = {reason.code: reason.handling for reason in REASONS}
    for reason in [*expected_dead, *expected_ignored]:
        malformed = rig.counted("saga_operator_malformed_messages_total", reason)
        ignored = rig.counted("saga_operator_replies_ignored_total", reason)
        assert (malformed, ignored) == ((1.0, 0.0) if reason in expected_dead else (0.0, 1.0)), reason
        assert handling[reason] == ("dead-lettered" if reason in expected_dead else "ignored"), reason


async def test_a_command_carries_its_deterministic_id_and_its_participants_reply_topic() -> None:
    rig = make_rig()
    ref = await rig.start("order-1")
    [sent] = rig.sender.sent
    assert sent.command.message_id == command_id(ref.uid, "reserve", CommandKind.ACTION, 1)
    assert sent.command.reply_topic == "saga.replies.stock"
    assert sent.stored_status is not None
    record_ = sent.stored_status.step("reserve")
    assert record_ is not None and record_.command_id == sent.command.message_id  # logged before it left
    # Resumed after a restart, the same attempt goes out again with the same id.
    again = make_rig()
    again.store = rig.store
    again.coordinator.kube = rig.store
    again.sender.store = rig.store
    await again.coordinator.observe(rig.store.body(ref), None)
    assert [s.command.message_id for s in again.sender.sent] == [sent.command.message_id]


# ---- isolation --------------------------------------------------------------------------------------


class HangingStore(FakeStore):
    """Status writes of the sagas in `hang` wait until released."""

    def __init__(self) -> None:
        super().__init__()
        self.hang: set[str] = set()
        self.release = asyncio.Event()

    async def write_status(self, ref: SagaRef, status: SagaStatus, resource_version: str | None) -> dict[str, Any]:
        if ref.name in self.hang:
            await self.release.wait()
        return await super().write_status(ref, status, resource_version)


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5.0):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_saga_whose_status_write_hangs_delays_no_other_saga_and_holds_back_only_its_offset() -> None:
    store = HangingStore()
    rig = make_rig()
    rig.store = store
    rig.coordinator.kube = store
    rig.sender.store = store
    slow, fast = await rig.start("slow"), await rig.start("fast")
    tp = TopicPartition("saga.replies.stock", 0)
    # Same partition: the slow saga's reply first, then the fast saga's.
    log = [
        record(reply_to(rig.last_command(slow)), offset=0),
        record(reply_to(rig.last_command(fast)), offset=1),
    ]
    consumer = FakeConsumer({tp: log})
    rig.pump = ReplyPump(consumer, rig.coordinator, rig.dead, rig.metrics, _retry, step_wait_ms=10)
    store.hang.add("slow")
    running = asyncio.create_task(rig.pump.run())
    try:
        await _until(lambda: (store.status(fast).step("reserve") or SagaStatus().steps).state == "Succeeded")  # type: ignore[union-attr]
        assert store.status(slow).step("reserve").state == "Dispatched"  # type: ignore[union-attr]
        await _until(lambda: consumer.committed(tp) is not None)
        await asyncio.sleep(0.1)
        assert consumer.committed(tp) == 0  # not past the slow saga's reply
        assert rig.pump.pending() == 1 and rig.pump.lag() > 0
        store.release.set()
        await _until(lambda: consumer.committed(tp) == 2)
        assert store.status(slow).step("reserve").state == "Succeeded"  # type: ignore[union-attr]
        assert rig.pump.pending() == 0 and rig.pump.lag() == 0
    finally:
        running.cancel()
        await rig.pump.stop()


# ---- records the client cannot read -----------------------------------------------------------------


async def test_an_unreadable_record_is_dead_lettered_and_skipped_and_nothing_drained_with_it_is_lost() -> None:
    rig = make_rig()
    a, b = await rig.start("a"), await rig.start("b")
    first, second = TopicPartition("saga.replies.stock", 0), TopicPartition("saga.replies.stock", 1)
    consumer = FakeConsumer(
        {
            # Drained first in a call that then fails on the other partition: aiokafka has moved it on.
            first: [record(reply_to(rig.last_command(a)), offset=0)],
            second: [
                CorruptRecordException("Invalid CRC"),
                record(reply_to(rig.last_command(b)), partition=1, offset=1),
            ],
        }
    )
    rig.pump = ReplyPump(consumer, rig.coordinator, rig.dead, rig.metrics, _retry, step_wait_ms=10)
    running = asyncio.create_task(rig.pump.run())
    try:
        await _until(lambda: consumer.committed(first) == 1 and consumer.committed(second) == 2)
        await rig.pump.drain()
    finally:
        running.cancel()
        await rig.pump.stop()
    for ref in (a, b):
        assert rig.store.status(ref).step("reserve").state == "Succeeded"  # type: ignore[union-attr]
    [(stand_in, reason, detail)] = rig.dead.written
    assert (reason, stand_in.topic, stand_in.partition, stand_in.offset, stand_in.value) == (
        "Undecodable",
        "saga.replies.stock",
        1,
        0,
        b"",
    )
    assert "CorruptRecordException" in detail
    assert rig.counted("saga_operator_malformed_messages_total", "Undecodable") == 1


@pytest.mark.parametrize("participants", [["stock"], ["stock", "payments"]])
async def test_the_pump_reads_the_reply_topic_of_each_participant_it_follows(participants: list[str]) -> None:
    consumer = FakeConsumer({})
    rig = make_rig(consumer)
    rig.pump.follow(participants)
    running = asyncio.create_task(rig.pump.run())
    await asyncio.sleep(0.02)
    assert consumer.topics == sorted(f"saga.replies.{p}" for p in participants)
    rig.pump.follow(["videos"])
    assert "saga.replies.videos" in consumer.topics and "saga.replies" not in consumer.topics
    running.cancel()


async def test_readyz_says_when_a_reply_waits_longer_than_the_stall_limit() -> None:
    from saga_operator.config import load
    from saga_operator.runtime.app import OperatorApp

    app = OperatorApp(load(reply_stall_seconds=30))
    rig = make_rig()
    app.coordinator, app._pump = rig.coordinator, rig.pump
    app._starting = None
    app._kafka_healthy = app._kafka_reachable = app._api_reachable = True
    assert app.not_ready() is None
    part = rig.pump._parts.setdefault(TopicPartition("saga.replies.stock", 0), _Partition())
    part.pending[7] = time.monotonic() - 45  # read 45 s ago, not applied yet
    reason = app.not_ready()
    assert reason is not None and "not applied" in reason
    assert app.metrics.registry.get_sample_value("saga_operator_reply_lag_seconds") == pytest.approx(45, abs=5)
    assert app.metrics.registry.get_sample_value("saga_operator_replies_pending") == 1
