"""The participant SDK: register an action and its compensation, and the SDK runs the rest.

    p = Participant("users", database="users.db", bootstrap_servers="localhost:9092", schema=SQL)

    @p.action("debit")
    def debit(tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
        ...                                   # raise BusinessError("InsufficientFunds", "...") to refuse

    @p.compensation("refund")
    def refund(tx: sqlite3.Connection, command: Command, debited: dict[str, Any]) -> None:
        ...                                   # must not fail for business reasons

    p.run_forever()

What the SDK does for every message on `saga.commands.<name>` (see docs/participants.md):

1. decode it; anything that is not a valid command for a registered handler goes to the dead-letter topic
   with the reason in a header, and the consumer goes on;
2. apply it through the inbox (dedupe, tombstones, stored outcome, handler) in one SQLite transaction, on
   a dedicated database thread so that a slow handler never stalls the Kafka client's heartbeats;
   an unexpected exception rolls everything back and is retried in-process with exponential backoff, then
   answered `error` with nothing stored;
3. produce the reply (keyed by the saga uid) and wait for the broker's ack;
4. only then commit the command's offset. A crash anywhere before that redelivers the command, and the
   inbox turns the redelivery into a replay of the stored reply: at-least-once delivery, exactly-once effect.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from saga_participants.inbox import (
    ActionHandler,
    BusinessError,
    CompensationHandler,
    Decision,
    Disposition,
    Handler,
    Inbox,
    open_database,
)
from saga_participants.metrics import ParticipantMetrics
from saga_participants.simulate import SimulatedFault, Simulation, simulation_for
from saga_protocol import (
    Command,
    CommandKind,
    DecodeError,
    ErrorInfo,
    Outcome,
    Reply,
    command_topic,
    dead_letter_topic,
    decode_command,
    encode_reply,
    idempotency_key,
)

__all__ = ["BusinessError", "Participant", "RetryPolicy", "Stopping"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
A = TypeVar("A", bound=ActionHandler)
C = TypeVar("C", bound=CompensationHandler)

#: Dead-letter headers, the same names the operator uses for its reply topic's DLQ (docs/protocol.md).
#: The original message's headers are kept after them, so the DLQ shows both.
DLQ_REASON: Final = "dlq_reason"
DLQ_DETAIL: Final = "dlq_detail"
DLQ_ORIGINAL_TOPIC: Final = "dlq_topic"
DLQ_ORIGINAL_PARTITION: Final = "dlq_partition"
DLQ_ORIGINAL_OFFSET: Final = "dlq_offset"
DLQ_PARTICIPANT: Final = "dlq_participant"
DLQ_TIME: Final = "dlq_time"
DLQ_TRUNCATED: Final = "dlq_truncated"

#: Dead-letter reasons the SDK adds to those of `DecodeError` (NotJson, SchemaViolation, Oversized, ...).
UNKNOWN_ACTION: Final = "UnknownAction"
IDEMPOTENCY_KEY_MISMATCH: Final = "IdempotencyKeyMismatch"
KEY_MISMATCH: Final = "KeyMismatch"
INVALID_REPLY_TOPIC: Final = "InvalidReplyTopic"
REPLY_UNDELIVERABLE: Final = "ReplyUndeliverable"

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HANDLER_NAME_LENGTH: Final = 128
_DLQ_VALUE_LIMIT: Final = 512 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """In-process retries of a handler that raised an unexpected exception, before replying `error`.

    Bounded on purpose: past it the operator's per-step retry policy takes over, and it can see the
    failures; retrying here forever would hide them and stall every saga behind this one.
    """

    attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError(f"invalid retry policy {self}")
        if self.multiplier < 1:
            raise ValueError(f"invalid retry policy {self}")

    def backoff(self, retry: int) -> float:
        """Seconds before retry number `retry` (1-based). Jittered so that replicas don't retry in step."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class Stopping(Exception):
    """Raised by process() (and internal waits) once stop() was called: the command in hand is abandoned
    before anything was applied, or after its outcome was stored (then a redelivery replays it)."""


class _Database:
    """The participant's SQLite connection, used only from one dedicated thread.

    Handlers are plain blocking functions (sqlite3, maybe a slow simulated dependency); running them on
    the event loop would starve aiokafka's heartbeat and fetch tasks and get the consumer evicted.
    """

    def __init__(self, path: Path, schema: str | None, name: str) -> None:
        self.path = path
        self._schema = schema
        self._executor: ThreadPoolExecutor | None = None
        self._thread_name = f"saga-db-{name}"
        self._inbox: Inbox | None = None

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        await self.call(self._open)

    def _open(self) -> None:
        self._inbox = Inbox(open_database(self.path, self._schema))

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise RuntimeError("the participant's database is not open (use `async with participant:` or run())")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def apply(self, command: Command, handler: Handler) -> Decision:
        return await self.call(self._apply, command, handler)

    def _apply(self, command: Command, handler: Handler) -> Decision:
        assert self._inbox is not None
        return self._inbox.apply(command, handler)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            await asyncio.get_running_loop().run_in_executor(executor, inbox.connection.close)
        # Waits for a handler still running after its message was abandoned: its transaction finishes
        # (commit or rollback) before the process exits, so the file is never left mid-write.
        executor.shutdown(wait=True)


class Participant:
    """One saga participant service: a command topic, a handler per action and compensation, one database.

    `name` is the participant's DNS-label name as Saga specs reference it; it fixes the command topic
    (`saga.commands.<name>`), its dead-letter topic (`.dlq`) and the consumer group
    (`saga-participant-<name>`). Run one process per name and database: the inbox lives in that database,
    so two replicas with separate files would each believe a redelivered command is new.
    """

    def __init__(
        self,
        name: str,
        *,
        database: str | os.PathLike[str],
        bootstrap_servers: str = "localhost:9092",
        schema: str | None = None,
        http_host: str = "127.0.0.1",
        http_port: int | None = None,
        retry: RetryPolicy | None = None,
        topic_partitions: int = 1,
        topic_replication_factor: int = 1,
        create_topics: bool = True,
        reply_timeout: float = 30.0,
        max_simulated_delay: float = 60.0,
        liveness_timeout: float = 300.0,
        client_id: str | None = None,
    ) -> None:
        self.name = name
        self.command_topic = command_topic(name)  # also validates the name
        self.dead_letter_topic = dead_letter_topic(self.command_topic)
        self.group_id = f"saga-participant-{name}"
        self.bootstrap_servers = bootstrap_servers
        self.retry = retry or RetryPolicy()
        self.metrics = ParticipantMetrics(name)
        self._db = _Database(Path(database), schema, name)
        self._actions: dict[str, ActionHandler] = {}
        self._compensations: dict[str, CompensationHandler] = {}
        self._http_host = http_host
        self._http_port = http_port
        self._bound_port: int | None = None
        self._topic_partitions = topic_partitions
        self._topic_replication_factor = topic_replication_factor
        self._create_topics = create_topics
        self._reply_timeout = reply_timeout
        self._max_simulated_delay = max_simulated_delay
        self._liveness_timeout = liveness_timeout
        self._client_id = client_id or f"saga-participant-{name}"
        self._stopping = asyncio.Event()
        self._ready = False
        self._heartbeat = time.monotonic()
        self._consumer: Any = None
        self._producer: Any = None
        self._http_runner: web.AppRunner | None = None

    # -- registration ------------------------------------------------------------------------------

    def action(self, name: str) -> Callable[[A], A]:
        """Register the handler for commands of kind `action` naming `name` (the step's `action`)."""

        def register(fn: A) -> A:
            self._register(self._actions, name, fn)
            return fn

        return register

    def compensation(self, name: str) -> Callable[[C], C]:
        """Register the handler for commands of kind `compensation` naming `name` (the step's
        `compensation`, e.g. "refund" for the action "debit": commands name the handler to run)."""

        def register(fn: C) -> C:
            self._register(self._compensations, name, fn)
            return fn

        return register

    @staticmethod
    def _register(table: dict[str, Any], name: str, fn: Callable[..., Any]) -> None:
        if not name or len(name) > _HANDLER_NAME_LENGTH:
            raise ValueError(f"a handler name has 1 to {_HANDLER_NAME_LENGTH} characters, not {name!r}")
        if name in table:
            raise ValueError(f"a handler named {name!r} is already registered")
        table[name] = fn

    def handler_for(self, kind: CommandKind, name: str) -> Handler | None:
        table: Mapping[str, Handler] = self._actions if kind is CommandKind.ACTION else self._compensations
        return table.get(name)

    # -- state -------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while consuming: started, topics ensured, partitions assigned."""
        return self._ready

    @property
    def http_port(self) -> int | None:
        """The port the HTTP server is bound to (useful with http_port=0), once run() has started it."""
        return self._bound_port

    def stop(self) -> None:
        """Ask run() to finish: the message in hand is finished or abandoned (never half-committed)."""
        self._stopping.set()

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        self.metrics.ready.labels(self.name).set(1 if ready else 0)

    async def __aenter__(self) -> Participant:
        await self._db.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._db.close()

    # -- one command, without Kafka ----------------------------------------------------------------

    async def process(self, command: Command) -> Reply:
        """Everything but the transport: simulate knob, inbox, in-process retries, the reply to send.

        Needs the database open (`async with participant:`). Raises LookupError for a command naming no
        registered handler (the Kafka loop dead-letters those before calling this).
        """
        handler = self.handler_for(command.kind, command.action)
        if handler is None:
            raise LookupError(f"no {command.kind.value} handler named {command.action!r}")
        simulation = simulation_for(command, self.name)
        if simulation is not None:
            handler = self._simulated(handler, simulation, command)
            delay = min(simulation.delay_for(command), self._max_simulated_delay)
            if delay > 0:
                log.info(
                    "simulate: delaying %s %s of %s by %.1fs",
                    command.kind.value,
                    command.action,
                    command.idempotency_key,
                    delay,
                )
                await self._pause(delay)
        decision = await self._apply_with_retries(command, handler)
        self._count(command, decision)
        return self._reply(command, decision)

    @staticmethod
    def _simulated(handler: Handler, simulation: Simulation, command: Command) -> Handler:
        if not simulation.fails(command):
            return handler

        def failing(*_: Any) -> None:
            raise SimulatedFault(f"simulate: transient fault requested for attempt {command.attempt}")

        return failing

    async def _apply_with_retries(self, command: Command, handler: Handler) -> Decision:
        for run in range(1, self.retry.attempts + 1):
            try:
                decision = await self._db.apply(command, handler)
            except Exception as exc:
                # The database itself failed (locked past its timeout, disk full): as transient as a
                # handler exception, and equally safe to retry because the transaction rolled back.
                decision = Decision(
                    Disposition.TRANSIENT,
                    Outcome.ERROR,
                    error=ErrorInfo(reason=type(exc).__name__[:128], message=str(exc)[:4096]),
                    exception=exc,
                )
            if decision.handler_seconds is not None:
                self.metrics.handler_latency.labels(self.name, command.kind.value, command.action).observe(
                    decision.handler_seconds
                )
            if decision.disposition is not Disposition.TRANSIENT:
                return decision
            last = run == self.retry.attempts
            log.warning(
                "%s %s of %s (attempt %d) raised on run %d/%d%s",
                command.kind.value,
                command.action,
                command.idempotency_key,
                command.attempt,
                run,
                self.retry.attempts,
                ": giving up, replying error" if last else ", retrying",
                exc_info=decision.exception,
            )
            if last:
                return decision
            self.metrics.handler_retries.labels(self.name, command.kind.value).inc()
            await self._pause(self.retry.backoff(run))
        raise AssertionError("unreachable: the retry loop returns")

    def _count(self, command: Command, decision: Decision) -> None:
        m, name, kind = self.metrics, self.name, command.kind.value
        m.commands.labels(name, kind, decision.outcome.value).inc()
        if decision.disposition is Disposition.REPLAYED:
            m.duplicates.labels(name, kind).inc()
        elif decision.disposition is Disposition.TOMBSTONE:
            m.tombstones.labels(name).inc()
        elif decision.disposition is Disposition.REFUSED:
            m.refused_late_actions.labels(name).inc()
        elif decision.disposition is Disposition.NOOP:
            m.noop_compensations.labels(name).inc()
        log.info(
            "%s %s of %s attempt %d: %s (%s)%s",
            kind,
            command.action,
            command.idempotency_key,
            command.attempt,
            decision.outcome.value,
            decision.disposition.value,
            f" {decision.error.reason}: {decision.error.message}" if decision.error else "",
        )

    def _reply(self, command: Command, decision: Decision) -> Reply:
        # A replay echoes *this* delivery's attempt (not the first one's) and gets a fresh message id:
        # the operator matches replies to the attempt it is waiting for.
        return Reply(
            message_id=str(uuid.uuid4()),
            command_id=command.message_id,
            saga_uid=command.saga_uid,
            step=command.step,
            kind=command.kind,
            attempt=command.attempt,
            idempotency_key=command.idempotency_key,
            participant=self.name,
            outcome=decision.outcome,
            result=decision.result if decision.outcome is Outcome.SUCCEEDED else None,
            error=decision.error,
            duplicate=decision.duplicate,
            sent_at=datetime.now(UTC),
        )

    def check(self, command: Command, key: bytes | None = None) -> tuple[str, str] | None:
        """Why a decoded command cannot be processed here, as (dead-letter reason, detail), or None."""
        if self.handler_for(command.kind, command.action) is None:
            known = sorted(self._actions if command.kind is CommandKind.ACTION else self._compensations)
            return UNKNOWN_ACTION, f"{self.name} has no {command.kind.value} {command.action!r} (it has {known})"
        expected = idempotency_key(command.saga_uid, command.step)
        if command.idempotency_key != expected:
            # The key is what dedupe and tombstones hang on; a foreign one could pair an action with
            # another step's compensation.
            return IDEMPOTENCY_KEY_MISMATCH, f"idempotencyKey {command.idempotency_key!r}, expected {expected!r}"
        if key is not None and key != command.saga_uid.encode():
            # Per-saga ordering (a compensation queued behind its action) rests on this key.
            return KEY_MISMATCH, f"message key {key!r} is not the saga uid {command.saga_uid!r}"
        if not _TOPIC_NAME.match(command.reply_topic) or command.reply_topic in (".", ".."):
            return INVALID_REPLY_TOPIC, f"replyTopic {command.reply_topic!r} is not a Kafka topic name"
        return None

    def _refusal_reply(self, command: Command, reason: str, detail: str) -> Reply | None:
        """Tell the operator at once, rather than letting the step time out and retry in vain.

        An action is answered `failed` (it will never apply: the message is wrong, not the moment); a
        compensation `error`, because compensations cannot fail: the operator retries it and, past its
        cap, parks the saga as Failed for a person to look at. Nothing is stored: it never ran.
        """
        if reason == INVALID_REPLY_TOPIC:
            return None
        outcome = Outcome.FAILED if command.kind is CommandKind.ACTION else Outcome.ERROR
        decision = Decision(Disposition.TRANSIENT, outcome, error=ErrorInfo(reason=reason, message=detail[:4096]))
        self.metrics.commands.labels(self.name, command.kind.value, outcome.value).inc()
        return self._reply(command, decision)

    async def _unless_stopped(self, work: Awaitable[T], seconds: float) -> T:
        """Await `work` for at most `seconds` (TimeoutError), or until stop() (Stopping).

        Producing can wait a long time (metadata of a missing topic, a broker gone): SIGTERM must not
        wait for it. Abandoning is safe: the offset is not committed, so the command comes back.
        """
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({task, stopping}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if task in done:
            return task.result()
        task.cancel()
        # Retrieve the outcome of the abandoned send so that asyncio does not log it as never retrieved.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if stopping in done:
            raise Stopping
        raise TimeoutError(f"gave up after {seconds:.1f}s")

    async def _pause(self, seconds: float) -> None:
        """Sleep, but give up at once (raising Stopping) when stop() is called."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise Stopping

    # -- the service -------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT, in a fresh event loop."""
        asyncio.run(self.run())

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Serve until stop() (or SIGTERM/SIGINT when install_signal_handlers): HTTP, topics, consume."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            async with self:
                await self._start_http()
                try:
                    await self._ensure_topics()
                    await self._start_kafka()
                    await self._consume()
                except Stopping:
                    pass
                finally:
                    self._set_ready(False)
                    await self._stop_kafka()
                    await self._stop_http()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        log.info("participant %s stopped", self.name)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("participant %s: %s received, finishing the message in hand", self.name, sig.name)
        self.stop()

    async def _retrying(self, what: str, attempt: Callable[[], Any]) -> None:
        """Retry a startup step until it works or stop() is called: the broker may come up after us."""
        retry = 0
        while True:
            try:
                await attempt()
                return
            except (KafkaError, OSError) as exc:
                retry += 1
                delay = min(10.0, 0.5 * 2 ** min(retry, 5))
                log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
                await self._pause(delay)

    async def _ensure_topics(self) -> None:
        if not self._create_topics:
            return

        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id=self._client_id)
            await admin.start()
            try:
                response = await admin.create_topics(
                    [
                        NewTopic(self.command_topic, self._topic_partitions, self._topic_replication_factor),
                        NewTopic(self.dead_letter_topic, 1, self._topic_replication_factor),
                    ]
                )
            finally:
                await admin.close()
            for entry in response.topic_errors:
                topic, code = entry[0], entry[1]
                # 36 = TOPIC_ALREADY_EXISTS: another replica, the operator or a person created it first.
                if code not in (0, 36):
                    raise KafkaError(f"creating topic {topic} failed with error code {code}: {entry[2:]}")

        await self._retrying("ensuring topics", create)

    async def _start_kafka(self) -> None:
        async def start_producer() -> None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self._client_id,
                # The reply is what the operator's saga log waits for: no loss, no duplicates from
                # producer retries.
                enable_idempotence=True,
                acks="all",
                request_timeout_ms=15000,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer

        async def start_consumer() -> None:
            consumer = AIOKafkaConsumer(
                self.command_topic,
                bootstrap_servers=self.bootstrap_servers,
                client_id=self._client_id,
                group_id=self.group_id,
                # Offsets are committed by hand after the reply is acked; a fresh group must not skip
                # commands sent before it first joined.
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
            )
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer

        await self._retrying("starting the Kafka producer", start_producer)
        await self._retrying("starting the Kafka consumer", start_consumer)
        log.info(
            "participant %s consuming %s as group %s (handlers: actions %s, compensations %s)",
            self.name,
            self.command_topic,
            self.group_id,
            sorted(self._actions),
            sorted(self._compensations),
        )

    async def _stop_kafka(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            await consumer.stop()  # leaves the group: the partitions move on without a session timeout
        if producer is not None:
            await producer.stop()  # flushes what is in flight

    async def _consume(self) -> None:
        consumer = self._consumer
        while not self._stopping.is_set():
            self._heartbeat = time.monotonic()
            # One record at a time: the consumer's position then never runs ahead of what was handled,
            # so seeking back after a failure (below) re-reads exactly the failed record.
            batch = await consumer.getmany(timeout_ms=500, max_records=1)
            if not self._ready and consumer.assignment():
                self._set_ready(True)
                log.info("participant %s ready: assigned %s", self.name, sorted(consumer.assignment()))
            for tp, records in batch.items():
                for record in records:
                    self._heartbeat = time.monotonic()
                    try:
                        await self._handle(record)
                    except Stopping:
                        return  # not committed: redelivered, then replayed from the inbox if it had applied
                    except Exception:
                        # A bug or an outage the handlers' retries did not absorb. Skipping the record
                        # would lose a saga step; read it again after a pause instead.
                        log.exception("handling %s:%d@%d failed; retrying it", tp.topic, tp.partition, record.offset)
                        consumer.seek(tp, record.offset)
                        await self._pause(5.0)
                        continue
                    await self._commit(tp, record.offset + 1)

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            await self._consumer.commit({tp: offset})
        except KafkaError as exc:
            # Lost the partition in a rebalance, or the coordinator moved: the next owner re-reads the
            # command and the inbox replays its stored reply. Nothing to do but note it.
            log.warning(
                "committing %s:%d offset %d failed (%s); it will be redelivered", tp.topic, tp.partition, offset, exc
            )

    async def _handle(self, record: Any) -> None:
        # Fix (chaos run, docs/chaos.md): a header value can be null on the wire; bytes(None) raised
        # TypeError here, and the consume loop retried that one record forever (a poison message).
        headers = [(name, None if value is None else bytes(value)) for name, value in (record.headers or ())]
        try:
            command = decode_command(record.value, headers)
        except DecodeError as exc:
            await self._dead_letter(record, exc.reason, exc.detail)
            return
        refusal = self.check(command, record.key)
        if refusal is not None:
            reason, detail = refusal
            await self._dead_letter(record, reason, detail)
            refused = self._refusal_reply(command, reason, detail)
            if refused is not None:
                await self._deliver_reply(record, command.reply_topic, refused)
            return
        reply = await self.process(command)
        await self._deliver_reply(record, command.reply_topic, reply)

    async def _deliver_reply(self, record: Any, topic: str, reply: Reply) -> None:
        """Produce the reply and wait for the broker's ack, retrying for up to reply_timeout seconds.

        Past that (the reply topic does not exist, say), the command is set aside to the dead-letter
        topic rather than blocking every other saga behind it; its outcome stays stored, so re-sending
        it later replays the same reply.
        """
        key, value, headers = encode_reply(reply)
        deadline = time.monotonic() + self._reply_timeout
        retry = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                await self._unless_stopped(
                    self._producer.send_and_wait(topic, value, key=key, headers=headers), max(remaining, 0.1)
                )
                return
            except (KafkaError, TimeoutError) as exc:
                retry += 1
                if time.monotonic() >= deadline:
                    log.error(
                        "reply to %s for %s undeliverable (%s); dead-lettering the command",
                        topic,
                        reply.idempotency_key,
                        exc,
                    )
                    self.metrics.undeliverable_replies.labels(self.name).inc()
                    await self._dead_letter(
                        record, REPLY_UNDELIVERABLE, f"reply to {topic}: {type(exc).__name__}: {exc}", malformed=False
                    )
                    return
                log.warning("producing the reply to %s failed (%s); retrying", topic, exc)
                await self._pause(min(2.0, 0.1 * 2**retry))

    async def _dead_letter(self, record: Any, reason: str, detail: str, *, malformed: bool = True) -> None:
        """Set a message aside with why, and where it came from. Retried until the broker takes it:
        committing the offset without it would lose the message."""
        if malformed:
            self.metrics.malformed.labels(self.name, reason).inc()
            log.warning(
                "dead-lettering %s:%d@%d to %s: %s: %s",
                record.topic,
                record.partition,
                record.offset,
                self.dead_letter_topic,
                reason,
                detail,
            )
        value: bytes = record.value if record.value is not None else b""
        headers: list[tuple[str, bytes | None]] = [
            (DLQ_REASON, reason.encode()),
            (DLQ_DETAIL, detail[:4096].encode()),
            (DLQ_PARTICIPANT, self.name.encode()),
            (DLQ_ORIGINAL_TOPIC, record.topic.encode()),
            (DLQ_ORIGINAL_PARTITION, str(record.partition).encode()),
            (DLQ_ORIGINAL_OFFSET, str(record.offset).encode()),
            (DLQ_TIME, datetime.now(UTC).isoformat().encode()),
            # Null header values kept as they came (fix, chaos run: bytes(None) raised TypeError).
            *[(name, None if raw is None else bytes(raw)) for name, raw in (record.headers or ())],
        ]
        retry = 0
        while True:
            try:
                await self._unless_stopped(
                    self._producer.send_and_wait(self.dead_letter_topic, value, key=record.key, headers=headers), 30.0
                )
                return
            except MessageSizeTooLargeError:
                # The original fit on the command topic but not with our headers: keep its beginning.
                value = value[:_DLQ_VALUE_LIMIT]
                headers.append((DLQ_TRUNCATED, b"true"))
            except (KafkaError, TimeoutError) as exc:
                retry += 1
                log.warning("producing to %s failed (%s); retrying", self.dead_letter_topic, exc)
                await self._pause(min(10.0, 0.2 * 2**retry))

    # -- HTTP --------------------------------------------------------------------------------------

    async def _start_http(self) -> None:
        if self._http_port is None:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self._http_host, self._http_port).start()
        self._http_runner = runner
        self._bound_port = int(runner.addresses[0][1])
        log.info(
            "participant %s serving /healthz /readyz /metrics on %s:%d", self.name, self._http_host, self._bound_port
        )

    async def _stop_http(self) -> None:
        runner, self._http_runner = self._http_runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        # Alive unless the consume loop has not come round for liveness_timeout (a handler stuck forever,
        # say): a restart redelivers the command, which is safe, whereas waiting helps nobody.
        stalled = time.monotonic() - self._heartbeat
        if self._consumer is not None and stalled > self._liveness_timeout:
            return web.Response(status=503, text=f"consume loop stalled for {stalled:.0f}s\n")
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not consuming yet\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
