"""The reply pump: read every `saga.replies.<participant>` topic, apply each reply, commit what is done.

Isolation. Replies are handed to one lane per saga (its uid; records that do not decode share a lane of
their own): a lane applies its saga's replies one at a time, in the order read, and lanes run concurrently.
So a saga whose status write hangs or fails again and again holds up its own later replies and nobody
else's. Offsets are committed per partition only up to the lowest record not yet done (applied, ignored
or dead-lettered): a stuck saga holds back the commit of its partition (a restart reads its replies again;
the ones already applied are then ignored as `Duplicate`), never the reading of other partitions or other
sagas' replies on the same partition. The oldest record not yet done is `lag()`: a metric, and /readyz.

One reason per reply. A reply that could never have been the answer to a command the log recorded is
dead-lettered and counted in `saga_operator_malformed_messages_total{reason}`; one that is a true answer
arriving when it no longer matters is dropped and counted in `saga_operator_replies_ignored_total{reason}`;
never both (docs/protocol.md §12.3).

Records the client cannot read. aiokafka raises out of `getmany` when a batch fails its CRC, does not
decompress, or holds a record it cannot parse (a header name that is not UTF-8); the records it drained
from other partitions in that same call are lost to the caller, yet their positions have moved on, and the
broken batch is fetched again at the next call, forever. So on such an error every partition is sought back
to the record after the last one this pump received, each partition is stepped through one record at a time
until the culprit raises again, and that offset is dead-lettered `Undecodable` (an empty value, the error in
the detail, the offsets in the headers) and sought past.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import cramjam
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, CorruptRecordException, IllegalStateError, UnsupportedCodecError

from saga_operator.runtime.coordinator import Coordinator
from saga_operator.runtime.metrics import Metrics
from saga_plumbing import TRANSIENT_KAFKA_ERRORS
from saga_protocol import DecodeError, decode_reply, reply_topic, trace_carrier

T = TypeVar("T")
log = logging.getLogger(__name__)

#: What aiokafka raises out of getmany for a record or batch it cannot read (CRC, codec, parsing).
UNDECODABLE_ERRORS: tuple[type[BaseException], ...] = (
    CorruptRecordException,
    UnsupportedCodecError,
    cramjam.DecompressionError,
    zlib.error,
    struct.error,
    ValueError,  # UnicodeDecodeError among them: a header name that is not UTF-8
    EOFError,
    IndexError,
)
#: Records read but not yet done, over every partition, before the pump stops reading more.
MAX_PENDING = 5000
#: While looking for an unreadable record: records stepped through on a partition without finding one.
STEP_LIMIT = 500
#: The lane of records that have no saga (they do not decode): dead-lettered in their order.
_NO_SAGA = ""

Retry = Callable[[str, Callable[[], Awaitable[T]], tuple[type[BaseException], ...]], Awaitable[T]]


class DeadLetters(Protocol):
    async def write(self, record: Any, reason: str, detail: str) -> None: ...


class Rebalance(Protocol):
    """What the replica does when the group moves shards (app.OperatorApp): `revoked` before the pump commits
    and forgets the partitions taken away (stop driving their sagas), `assigned` before it reads the new ones
    (resume their sagas)."""

    async def revoked(self) -> None: ...

    async def assigned(self) -> None: ...


@dataclass(frozen=True)
class Unreadable:
    """Stands in for a record the client could not read: its place, no key, an empty value."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes = b""
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass
class _Partition:
    """Offsets of one assigned partition: those read and not yet done (in offset order, with the monotonic
    time each was read), the next one to read, the last one committed."""

    pending: dict[int, float] = field(default_factory=dict)
    next: int | None = None
    committed: int | None = None

    def committable(self) -> int | None:
        return next(iter(self.pending)) if self.pending else self.next


@dataclass
class _Item:
    record: Any
    tp: TopicPartition
    part: _Partition
    received: float  # wall clock, for the latency metrics


class ReplyPump:
    def __init__(
        self,
        consumer: Any,
        coordinator: Coordinator,
        dead_letters: DeadLetters,
        metrics: Metrics,
        retry: Retry[Any],
        *,
        max_pending: int = MAX_PENDING,
        step_wait_ms: int = 1000,
        rebalance: Rebalance | None = None,
    ) -> None:
        self.consumer = consumer
        self.coordinator = coordinator
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._retry = retry
        self.max_pending = max_pending
        self.step_wait_ms = step_wait_ms
        self.topics: set[str] = set()
        self._subscribed = False
        self._parts: dict[TopicPartition, _Partition] = {}
        self._lanes: dict[str, list[_Item]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._pending = 0
        self.healthy = True
        self.rebalance = rebalance
        # Set while the assigned partitions' sagas are resumed: records read meanwhile wait (their saga may not
        # be loaded yet, and a reply for an unknown saga would be dead-lettered).
        self._settled = asyncio.Event()
        self._settled.set()

    # ---- the subscription ---------------------------------------------------------------------

    def follow(self, participants: Iterable[str]) -> None:
        """Read the reply topics of these participants too (a saga named a new one)."""
        wanted = {reply_topic(p) for p in participants}
        if wanted <= self.topics:
            return
        self.topics |= wanted
        if self._subscribed:
            self._subscribe()

    def _subscribe(self) -> None:
        log.info("reading replies from %s", ", ".join(sorted(self.topics)))
        self.consumer.subscribe(topics=sorted(self.topics), listener=_Listener(self))
        self._subscribed = True

    # ---- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        if not self._subscribed:
            self._subscribe()
        while True:
            await self._room.wait()
            batch = await self._retry("reading replies", self._read, TRANSIENT_KAFKA_ERRORS)
            await self._settled.wait()
            received = time.time()
            for tp, records in batch.items():
                for record in records:
                    self._accept(tp, record, received)
            await self.commit()

    async def _read(self) -> dict[TopicPartition, list[Any]]:
        await self._know_positions()
        try:
            batch: dict[TopicPartition, list[Any]] = await self.consumer.getmany(timeout_ms=500, max_records=500)
        except TRANSIENT_KAFKA_ERRORS:
            self.healthy = False
            raise
        except UNDECODABLE_ERRORS as exc:
            self.healthy = True
            log.warning("a reply batch could not be read (%s: %s): looking for the record", type(exc).__name__, exc)
            await self._recover()
            return {}
        self.healthy = True
        return batch

    async def _know_positions(self) -> None:
        """The position of each newly assigned partition, before its first read: where to seek back to if a
        read fails after aiokafka moved it on."""
        for tp in self.consumer.assignment():
            part = self._parts.get(tp)
            if part is None or part.next is None:
                try:
                    position = await self.consumer.position(tp)
                except IllegalStateError:
                    continue  # revoked meanwhile
                self._parts.setdefault(tp, _Partition()).next = position

    async def _recover(self) -> None:
        assigned = [tp for tp in self.consumer.assignment() if tp in self._parts]
        for tp in assigned:
            position = self._parts[tp].next
            if position is not None:
                self.consumer.seek(tp, position)
        for tp in assigned:
            await self._step_through(tp)

    async def _step_through(self, tp: TopicPartition) -> None:
        """Read `tp` one record at a time; dead-letter and skip each offset that raises."""
        stepped = 0
        while stepped < STEP_LIMIT:
            part = self._parts.get(tp)
            if part is None or part.next is None:
                return
            offset = part.next
            try:
                got = await self.consumer.getmany(tp, timeout_ms=self.step_wait_ms, max_records=1)
            except IllegalStateError:
                return  # revoked meanwhile
            except UNDECODABLE_ERRORS as exc:
                await self._unreadable(tp, offset, exc)
                self.consumer.seek(tp, offset + 1)
                stepped = 0
                continue
            records = got.get(tp) or []
            if not records:
                return
            self._accept(tp, records[0], time.time())
            stepped += 1

    async def _unreadable(self, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        stand_in = Unreadable(tp.topic, tp.partition, offset)
        detail = f"the client could not read the record at or after this offset: {type(exc).__name__}: {exc}"
        await self._dead_letter(stand_in, "Undecodable", detail)
        part = self._parts.get(tp)
        if part is not None:
            part.next = offset + 1

    # ---- lanes --------------------------------------------------------------------------------

    def _accept(self, tp: TopicPartition, record: Any, received: float) -> None:
        part = self._parts.setdefault(tp, _Partition())
        part.pending[record.offset] = time.monotonic()
        part.next = record.offset + 1
        self._pending += 1
        if self._pending >= self.max_pending:
            self._room.clear()
        item = _Item(record, tp, part, received)
        lane_key = _lane_of(record)
        lane = self._lanes.get(lane_key)
        if lane is not None:
            lane.append(item)
            return
        self._lanes[lane_key] = [item]
        task = asyncio.ensure_future(self._drain(lane_key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, lane_key: str) -> None:
        lane = self._lanes[lane_key]
        try:
            while lane:
                item = lane[0]
                if self._parts.get(item.tp) is not item.part:
                    # Its partition was taken away (a rebalance) after it was read: not applied, not committed
                    # here; the partition's new owner reads it from the last commit.
                    lane.pop(0)
                    continue
                try:
                    await self.handle(item.record, item.received)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Not done: its offset stays uncommitted (the lag shows it) and a restart reads it again.
                    log.exception("reply at %s", _where(item.record))
                else:
                    self._done(item)
                lane.pop(0)
        finally:
            del self._lanes[lane_key]

    def _done(self, item: _Item) -> None:
        if item.part.pending.pop(item.record.offset, None) is None:
            return  # its partition was taken away meanwhile
        self._pending -= 1
        if self._pending < self.max_pending:
            self._room.set()

    async def drain(self) -> None:
        """Wait for every lane to finish (tests; shutdown cancels them instead)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- one record ---------------------------------------------------------------------------

    async def handle(self, record: Any, received: float | None = None) -> None:
        """Decode, check and apply one record, or dead-letter it, or count it as ignored: exactly one."""
        try:
            reply = decode_reply(record.value, record.headers)
        except DecodeError as exc:
            await self._dead_letter(record, exc.reason, exc.detail)
            return
        try:
            ignored = await self.coordinator.apply_reply(
                reply,
                time.time() if received is None else received,
                topic=record.topic,
                key=record.key,
                trace=trace_carrier(record.headers) if self.coordinator.tracing.enabled else None,
            )
        except Exception as exc:
            # Fix (chaos run, docs/chaos.md): an exception here (Gone: the saga was deleted after its finalizer
            # was removed by hand; or any bug) used to end the reply pump for good. Set the reply aside instead:
            # the step's timeout asks again.
            log.exception("reply for saga %s step %s could not be applied", reply.saga_uid, reply.step)
            await self._dead_letter(record, "NotApplied", f"{type(exc).__name__}: {exc}")
            return
        if not ignored:
            return
        first = ignored[0]  # one reply, one reason
        if first.invalid:
            detail = first.detail or f"step {reply.step} {reply.kind.value} attempt {reply.attempt}"
            await self._dead_letter(record, first.reason, detail)
        else:
            self.metrics.replies_ignored.labels(first.reason).inc()

    async def _dead_letter(self, record: Any, reason: str, detail: str) -> None:
        log.warning("reply at %s set aside: %s (%s)", _where(record), reason, detail)
        await self.dead_letters.write(record, reason, detail)
        self.metrics.malformed.labels(reason).inc()

    # ---- offsets ------------------------------------------------------------------------------

    async def commit(self) -> None:
        """Commit, per partition, the offset of the lowest record not yet done (or past the last one read)."""
        offsets: dict[TopicPartition, int] = {}
        for tp, part in self._parts.items():
            offset = part.committable()
            if offset is not None and offset != part.committed:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await self._retry(
                "committing the replies' offsets", lambda: self.consumer.commit(offsets), TRANSIENT_KAFKA_ERRORS
            )
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took partitions away: their new owner reads from the last commit; what was applied
            # meanwhile is then ignored as Duplicate.
            log.info("replies' offsets not committed (%s); the next owner reads them again", exc)
            return
        for tp, offset in offsets.items():
            still = self._parts.get(tp)
            if still is not None:
                still.committed = offset

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions taken away, or given anew (their position is then the committed offset)."""
        for tp in partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                self._pending -= len(part.pending)
                part.pending.clear()
        if self._pending < self.max_pending:
            self._room.set()

    def lag(self) -> float:
        """Seconds the oldest record read and not yet done has waited (0: none)."""
        oldest = min((next(iter(p.pending.values())) for p in self._parts.values() if p.pending), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def pending(self) -> int:
        return sum(len(p.pending) for p in self._parts.values())


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pump: ReplyPump) -> None:
        self.pump = pump

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.pump._settled.clear()
        if self.pump.rebalance is not None:
            await self.pump.rebalance.revoked()
        mine = [tp for tp in revoked if tp in self.pump._parts]
        if mine:
            try:
                await asyncio.wait_for(self.pump.commit(), 10)
            except Exception as exc:
                log.info("replies' offsets not committed before a rebalance: %s", exc)
        self.pump.forget(mine)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.pump.forget(assigned)
        try:
            if self.pump.rebalance is not None:
                await self.pump.rebalance.assigned()
        finally:
            self.pump._settled.set()


def _lane_of(record: Any) -> str:
    """The saga a record is about, as far as the key says (the checks make sure the key is the saga's uid)."""
    key = record.key
    if not key:
        return _NO_SAGA
    try:
        return "saga:" + bytes(key).decode()
    except UnicodeDecodeError:
        return _NO_SAGA


def _where(record: Any) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"
