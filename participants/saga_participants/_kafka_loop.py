"""The Kafka side of a participant: topics, clients, and the consume loop.

Commands of different sagas are handled concurrently; commands of one saga in order:

* every record goes to the *lane* of its key (the saga uid): a record starts only when the previous record
  of its lane has finished, so a step's compensation still queues behind its action;
* at most `max_in_flight` records are between fetch and finish (running or waiting in their lane); when
  all slots are taken the loop stops fetching until one frees up;
* the offset committed for a partition is the lowest offset still unfinished there (or the one after
  the last fetched, when none is): a crash redelivers every command that was not finished, never skips
  one, and the inbox turns what had been applied into replays.

A record is finished when its reply was acknowledged (or it was dead-lettered). A record whose handling
raises (a bug, an outage the retries did not absorb) is tried again in place after a pause, holding its
slot and its lane: skipping it would lose a saga step.

A record the client cannot read (its batch does not decompress, a CRC mismatch) must not stall its
partition (docs/protocol.md, "Compression"). aiokafka raises such a batch out of `getmany`, naming no
partition, and may already have moved its position past records of other partitions that this call then
never returned. So the loop rewinds every partition to the offset after the last record it handed out,
finds the partition whose next record cannot be read by fetching each alone, one record at a time, and
dead-letters that offset `Undecodable` (no key, empty value) and skips it; inside a compressed batch each
of its records is found, dead-lettered and skipped in turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, CorruptRecordException, KafkaError, UnsupportedCodecError

from saga_participants._delivery import Delivery
from saga_participants._metrics import ParticipantMetrics
from saga_participants._pipeline import Pipeline
from saga_participants._tracing import ParticipantTracing
from saga_plumbing import KafkaSettings, TopicSpec, ensure_topics, retry_transient
from saga_plumbing.retry import Stopped
from saga_protocol import DecodeError, decode_command

log = logging.getLogger(__name__)

#: How long a revoked partition's records in hand may finish (and commit) before the partition moves on.
REVOKE_GRACE: Final = 10.0
#: Pause before handling a record again whose handling raised.
RETRY_PAUSE: Final = 5.0
#: The dead-letter reason of a record that cannot be read.
UNDECODABLE: Final = "Undecodable"
#: How long to wait for one partition's next record while looking for an unreadable one.
PROBE_TIMEOUT_MS: Final = 1000


def unreadable(exc: BaseException) -> bool:
    """Whether `getmany` raised `exc` because a fetched batch cannot be read: a corrupt batch or CRC, an
    unknown codec, or a decompressor's own error (cramjam's, zlib's, ...: anything not a Kafka error)."""
    if isinstance(exc, CorruptRecordException | UnsupportedCodecError):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, KafkaError | ConsumerStoppedError)


@dataclass(frozen=True)
class UnreadableRecord:
    """What is known of a record that could not be read: where it is. Dead-lettered as such."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = b""  # (a producer refuses a record with neither key nor value)
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True)
class LoopConfig:
    participant: str
    command_topic: str
    reply_topic: str
    dead_letter_topic: str
    group_id: str
    client_id: str
    kafka: KafkaSettings
    max_in_flight: int
    reply_timeout: float
    liveness_timeout: float
    create_topics: bool
    topic_partitions: int
    topic_replication_factor: int


@dataclass
class PartitionOffsets:
    """The offsets of one assigned partition between fetch and commit."""

    pending: set[int] = field(default_factory=set)
    fetched_up_to: int | None = None  # the offset after the last record fetched
    committed: int = -1

    def started(self, offset: int) -> None:
        self.pending.add(offset)
        self.fetched_up_to = max(self.fetched_up_to or 0, offset + 1)

    def finished(self, offset: int) -> None:
        self.pending.discard(offset)

    def commit_point(self) -> int | None:
        """The next offset to read after a crash: the lowest unfinished one."""
        return min(self.pending) if self.pending else self.fetched_up_to


@dataclass
class _InFlight:
    tp: TopicPartition
    offset: int
    busy_since: float | None = None  # while its current try runs (not while it waits in its lane)


class KafkaLoop:
    def __init__(
        self,
        config: LoopConfig,
        pipeline: Pipeline,
        metrics: ParticipantMetrics,
        stop: asyncio.Event,
        on_ready: Callable[[bool], None],
        tracing: ParticipantTracing | None = None,
    ) -> None:
        self.config = config
        self._tracing = tracing if tracing is not None else ParticipantTracing(config.participant, None)
        self._pipeline = pipeline
        self._metrics = metrics
        self._stop = stop
        self._on_ready = on_ready
        self._consumer: Any = None
        self._producer: Any = None
        self._delivery: Delivery | None = None
        self._inflight: dict[asyncio.Task[None], _InFlight] = {}
        self._lanes: dict[bytes | None, asyncio.Task[None]] = {}
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._commit_lock = asyncio.Lock()
        self._heartbeat = time.monotonic()
        self._ready = False

    # -- the service -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Ensure the topics, start the clients (waiting for a broker that is not up yet), consume until
        the stop event is set (raises saga_plumbing's Stopped when that happens during start-up)."""
        cfg = self.config
        transient = (KafkaError, OSError)
        try:
            if cfg.create_topics:
                topics = [
                    TopicSpec(cfg.command_topic, cfg.topic_partitions, cfg.topic_replication_factor),
                    TopicSpec(cfg.dead_letter_topic, 1, cfg.topic_replication_factor),
                ]
                await retry_transient(
                    "ensuring topics",
                    lambda: ensure_topics(cfg.kafka, topics, client_id=cfg.client_id),
                    transient=transient,
                    stop=self._stop,
                )
            self._producer = await retry_transient(
                "starting the Kafka producer", self._start_producer, transient=transient, stop=self._stop
            )
            self._delivery = Delivery(
                cfg.participant,
                self._producer,
                cfg.dead_letter_topic,
                self._metrics,
                reply_timeout=cfg.reply_timeout,
                stop=self._stop,
            )
            self._consumer = await retry_transient(
                "starting the Kafka consumer", self._start_consumer, transient=transient, stop=self._stop
            )
            await self._consume()
        finally:
            self._set_ready(False)
            await self._abandon_in_flight()
            consumer, self._consumer = self._consumer, None
            producer, self._producer = self._producer, None
            if consumer is not None:
                await consumer.stop()  # leaves the group: the partitions move on without a session timeout
            if producer is not None:
                await producer.stop()  # flushes what is in flight

    def liveness(self) -> str | None:
        """Why /healthz should fail (a restart redelivers the command, which is safe), or None."""
        if self._consumer is None:
            return None
        now, limit = time.monotonic(), self.config.liveness_timeout
        if now - self._heartbeat > limit:
            return f"consume loop stalled for {now - self._heartbeat:.0f}s"
        busy = [f.busy_since for f in self._inflight.values() if f.busy_since is not None]
        if busy and now - min(busy) > limit:
            return f"a command has been in hand for {now - min(busy):.0f}s"
        return None

    async def _start_producer(self) -> Any:
        producer = AIOKafkaProducer(
            **self.config.kafka.client_options(self.config.client_id),
            # The reply is what the operator's saga log waits for: no loss, no duplicates from retries.
            enable_idempotence=True,
            acks="all",
            request_timeout_ms=15000,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _start_consumer(self) -> Any:
        cfg = self.config
        consumer = AIOKafkaConsumer(
            **cfg.kafka.client_options(cfg.client_id),
            group_id=cfg.group_id,
            # Offsets are committed by hand once a command is finished; a fresh group must not skip
            # commands sent before it first joined.
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        consumer.subscribe([cfg.command_topic], listener=_Rebalance(self))
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        log.info("participant %s consuming %s as group %s", cfg.participant, cfg.command_topic, cfg.group_id)
        return consumer

    def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            self._on_ready(ready)

    # -- the loop ----------------------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            free = self.config.max_in_flight - len(self._inflight)
            if free <= 0:
                await asyncio.wait(set(self._inflight), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=free)
            except Exception as exc:
                if not unreadable(exc):
                    raise
                await self._skip_unreadable(exc)
                continue
            if not self._ready and consumer.assignment():
                log.info("participant %s ready: assigned %s", self.config.participant, sorted(consumer.assignment()))
                self._set_ready(True)
            for tp, records in batch.items():
                for record in records:
                    self._dispatch(tp, record)

    async def _skip_unreadable(self, exc: Exception) -> None:
        consumer = self._consumer
        log.warning("participant %s: a fetched batch cannot be read (%r); looking for it", self.config.participant, exc)
        assigned = sorted(consumer.assignment())
        for tp in assigned:
            # Back to what was handed out: the failed getmany may have consumed records it never returned.
            offsets = self._offsets.get(tp)
            if offsets is not None and offsets.fetched_up_to is not None:
                consumer.seek(tp, offsets.fetched_up_to)
            else:
                committed = await consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)
                else:
                    await consumer.seek_to_beginning(tp)
        found = False
        for tp in assigned:
            while not self._stop.is_set():
                try:
                    batch = await consumer.getmany(tp, timeout_ms=PROBE_TIMEOUT_MS, max_records=1)
                except Exception as again:
                    if not unreadable(again):
                        raise
                    found = True
                    await self._dead_letter_unreadable(tp, await consumer.position(tp), again)
                    continue  # the next offset may be in the same batch
                for record in batch.get(tp, ()):
                    self._dispatch(tp, record)
                break
        if not found:
            # Not reproducible per partition (a transient fault, or not a batch at all): try again shortly.
            log.warning("participant %s: no unreadable record found; fetching again", self.config.participant)
            await asyncio.sleep(1.0)

    async def _dead_letter_unreadable(self, tp: TopicPartition, offset: int, exc: Exception) -> None:
        assert self._delivery is not None
        offsets = self._offsets.setdefault(tp, PartitionOffsets())
        offsets.started(offset)
        detail = f"the record at {tp.topic}:{tp.partition}@{offset} cannot be read: {type(exc).__name__}: {exc}"
        await self._delivery.dead_letter(UnreadableRecord(tp.topic, tp.partition, offset), UNDECODABLE, detail[:4096])
        offsets.finished(offset)
        self._consumer.seek(tp, offset + 1)
        await self._commit(tp, offsets)

    def _dispatch(self, tp: TopicPartition, record: Any) -> None:
        offsets = self._offsets.setdefault(tp, PartitionOffsets())
        offsets.started(record.offset)
        lane = record.key
        flight = _InFlight(tp, record.offset)
        task = asyncio.create_task(self._work(flight, offsets, record, self._lanes.get(lane)))
        self._inflight[task] = flight
        self._lanes[lane] = task
        self._metrics.in_flight.labels(self.config.participant).set(len(self._inflight))
        task.add_done_callback(lambda done: self._done(done, lane))

    def _done(self, task: asyncio.Task[None], lane: bytes | None) -> None:
        flight = self._inflight.pop(task, None)
        if self._lanes.get(lane) is task:
            del self._lanes[lane]
        self._metrics.in_flight.labels(self.config.participant).set(len(self._inflight))
        if not task.cancelled() and task.exception() is not None and flight is not None:
            exc = task.exception()
            if not isinstance(exc, Stopped):
                log.error("record %s:%d@%d: unexpected %r", flight.tp.topic, flight.tp.partition, flight.offset, exc)

    async def _work(
        self, flight: _InFlight, offsets: PartitionOffsets, record: Any, previous: asyncio.Task[None] | None
    ) -> None:
        tp = flight.tp
        if previous is not None:
            await asyncio.wait([previous])  # this saga's previous command first; its outcome is its own
        while True:
            flight.busy_since = time.monotonic()
            try:
                await self._handle(record)
                break
            except Stopped:
                raise
            except Exception:
                # Skipping the record would lose a saga step; read it again after a pause instead.
                log.exception("handling %s:%d@%d failed; retrying it", tp.topic, tp.partition, record.offset)
            finally:
                flight.busy_since = None
            await asyncio.sleep(RETRY_PAUSE)
        offsets.finished(record.offset)
        await self._commit(tp, offsets)

    async def _handle(self, record: Any) -> None:
        assert self._delivery is not None
        # Fix (chaos run, docs/chaos.md): a header value can be null on the wire; bytes(None) raised
        # TypeError here, and the consume loop retried that one record forever (a poison message).
        headers = [(name, None if value is None else bytes(value)) for name, value in (record.headers or ())]
        try:
            command = decode_command(record.value, headers)
        except DecodeError as exc:
            await self._delivery.dead_letter(record, exc.reason, exc.detail)
            return
        with self._tracing.handling(command, headers, record.topic) as handling:
            refusal = self._pipeline.refusal(command, record.key)
            if refusal is not None:
                handling.set_aside(refusal.reason)
                await self._delivery.dead_letter(record, refusal.reason, refusal.detail)
                refused = self._pipeline.refusal_reply(command, refusal)
                if refused is not None:
                    handling.answered(refused, refusal.reason)
                    await self._delivery.reply(record, refused, self.config.reply_topic, handling.reply_trace())
                return
            reply = await self._pipeline.process(command)
            handling.answered(reply)
            # The trusted topic, never the command's: command_problem refused any other (UntrustedReplyTopic).
            await self._delivery.reply(record, reply, self.config.reply_topic, handling.reply_trace())

    async def _commit(self, tp: TopicPartition, offsets: PartitionOffsets) -> None:
        if self._offsets.get(tp) is not offsets:
            return  # the partition was revoked since: its new owner reads from the last commit
        async with self._commit_lock:  # one at a time: an older commit must never land after a newer one
            point = offsets.commit_point()
            if point is None or point <= offsets.committed:
                return
            try:
                await self._consumer.commit({tp: point})
            except KafkaError as exc:
                # Lost the partition in a rebalance, or the coordinator moved: the next owner re-reads the
                # commands after the last commit and the inbox replays their stored replies.
                log.warning(
                    "committing %s:%d offset %d failed (%s); redelivered later", tp.topic, tp.partition, point, exc
                )
                return
            offsets.committed = point

    # -- rebalances and stopping -------------------------------------------------------------------

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Before the partitions move on: let their records in hand finish (and commit) for a moment."""
        tasks = {task for task, flight in self._inflight.items() if flight.tp in partitions}
        if tasks:
            log.info(
                "partitions %s revoked with %d command(s) in hand; waiting for them", sorted(partitions), len(tasks)
            )
            await asyncio.wait(tasks, timeout=REVOKE_GRACE)
        for tp in partitions:
            self._offsets.pop(tp, None)  # late finishers no longer commit (see _commit)

    async def _abandon_in_flight(self) -> None:
        """Stopping: what is in hand is abandoned, never half-done. Its offset is not committed, so it comes
        back, and what the store had already applied is replayed from the inbox."""
        tasks = set(self._inflight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: KafkaLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass
