"""`Participant`: register an action and its compensation, configure, `run()`; the SDK does the rest.

    p = Participant("users", database="users.db", schema=SQL, bootstrap_servers="localhost:9092")

    @p.action("debit")
    def debit(tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
        ...                                   # raise BusinessError("InsufficientFunds", "...") to refuse

    @p.compensation("refund")
    def refund(tx: sqlite3.Connection, command: Command, debited: dict[str, Any]) -> None:
        ...                                   # must not fail for business reasons

    p.run_forever()

For every message on `saga.commands.<name>` (docs/participants.md): decode it (what is not a valid command
for a registered handler goes to the dead-letter topic); apply it through the store's inbox (dedupe,
tombstones, stored outcome, the handler, one transaction), retrying an unexpected exception in-process a
few times; produce the reply and wait for the broker's ack; only then commit the offset. Different sagas
are handled concurrently, one saga's commands in order. Where each part lives: `_pipeline` (command to
reply), `_inbox` (the rules) and the stores `_sqlite`, `_postgres`, `_kafka_loop` (topics, clients,
concurrency, offsets), `_delivery` (replies, dead letters), `_faults` (the opt-in `simulate` knob).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

from opentelemetry.sdk.trace import TracerProvider

from saga_participants._faults import FaultInjection
from saga_participants._handlers import ActionHandler, CompensationHandler, Handler
from saga_participants._inbox import InboxStore
from saga_participants._kafka_loop import KafkaLoop, LoopConfig
from saga_participants._metrics import ParticipantMetrics
from saga_participants._pipeline import Interceptor, Pipeline
from saga_participants._settings import ParticipantSettings, RetryPolicy, check_namespaces, split_namespaces
from saga_participants._sqlite import SqliteStore
from saga_participants._tracing import ParticipantTracing, provider_from_env
from saga_plumbing import KafkaSettings, ProbeServer
from saga_plumbing.retry import Stopped
from saga_protocol import CommandKind, command_topic, dead_letter_topic
from saga_protocol import reply_topic as default_reply_topic

log = logging.getLogger("saga_participants")

A = TypeVar("A", bound=ActionHandler[Any])
C = TypeVar("C", bound=CompensationHandler[Any])

_HANDLER_NAME_LENGTH: Final = 128


def _defaults() -> dict[str, Any]:
    """ParticipantSettings' defaults, without reading the environment."""
    return {name: info.default for name, info in ParticipantSettings.model_fields.items() if name != "kafka"}


def _store(store: InboxStore | None, database: str | os.PathLike[str] | None, schema: str | None) -> InboxStore:
    if (store is None) == (database is None):
        raise ValueError("give a participant either a store or a database (an SQLite file), not both or neither")
    if store is not None:
        if schema is not None:
            raise ValueError("schema= goes with database=; give a store its schema yourself")
        return store
    assert database is not None
    return SqliteStore(database, schema=schema)


def _namespaces(given: Iterable[str] | str) -> frozenset[str] | None:
    names = split_namespaces(given) if isinstance(given, str) else tuple(given)
    return frozenset(check_namespaces(names)) or None  # empty: every namespace


def _kafka(
    kafka: KafkaSettings | None, bootstrap_servers: str | None, settings: ParticipantSettings | None
) -> KafkaSettings:
    if kafka is not None and bootstrap_servers is not None:
        raise ValueError("give kafka= or its bootstrap_servers= shortcut, not both")
    if kafka is not None:
        return kafka
    if bootstrap_servers is not None:
        return KafkaSettings(bootstrap_servers=bootstrap_servers)
    return settings.kafka if settings is not None else KafkaSettings()  # KAFKA_* from the environment


class Participant:
    """One saga participant service: a command topic, a handler per action and compensation, one store.

    `name` is the participant's DNS-label name as Saga specs reference it; it fixes the command topic
    (`saga.commands.<name>`), its dead-letter topic (`.dlq`) and the consumer group
    (`saga-participant-<name>`). The inbox lives in `store` (or the SQLite file `database`, with your
    `schema`). Options left out (None) come from `settings` when given, else their defaults
    (docs/participants.md has the table).

    It replies only to `reply_topic` (default `saga.replies.<name>`, the topic only its principal may write),
    never to a topic a command names: a command naming another is dead-lettered `UntrustedReplyTopic` and
    not answered. `allowed_namespaces` (default: every namespace) are the namespaces whose sagas may command
    it; a command from another is refused `NamespaceNotAllowed`.
    """

    def __init__(
        self,
        name: str,
        *,
        store: InboxStore | None = None,
        database: str | os.PathLike[str] | None = None,
        schema: str | None = None,
        settings: ParticipantSettings | None = None,
        kafka: KafkaSettings | None = None,
        bootstrap_servers: str | None = None,
        retry: RetryPolicy | None = None,
        interceptors: Sequence[Interceptor] = (),
        reply_topic: str | None = None,
        allowed_namespaces: Iterable[str] | None = None,
        http_host: str | None = None,
        http_port: int | None = None,
        max_in_flight: int | None = None,
        reply_timeout: float | None = None,
        liveness_timeout: float | None = None,
        create_topics: bool | None = None,
        topic_partitions: int | None = None,
        topic_replication_factor: int | None = None,
        client_id: str | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.name = name
        self.command_topic = command_topic(name)  # also validates the name
        self.dead_letter_topic = dead_letter_topic(self.command_topic)
        self.group_id = f"saga-participant-{name}"
        self.store = _store(store, database, schema)
        self.kafka = _kafka(kafka, bootstrap_servers, settings)
        given = settings.model_dump(exclude={"kafka"}) if settings is not None else _defaults()

        def option(value: Any, key: str) -> Any:
            return value if value is not None else given[key]

        #: The only topic this participant replies to.
        self.reply_topic: str = option(reply_topic, "reply_topic") or default_reply_topic(name)
        #: The namespaces whose sagas may command it; None: every namespace.
        self.allowed_namespaces: frozenset[str] | None = _namespaces(option(allowed_namespaces, "allowed_namespaces"))
        self._http_host: str = option(http_host, "http_host")
        self._http_port: int | None = option(http_port, "http_port")
        self.max_in_flight: int = option(max_in_flight, "max_in_flight")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {self.max_in_flight}")
        interceptors = list(interceptors)
        if given["allow_fault_injection"] and not any(isinstance(i, FaultInjection) for i in interceptors):
            interceptors.insert(0, FaultInjection(max_delay=given["max_fault_delay"]))
        self.metrics = ParticipantMetrics(name)
        self._actions: dict[str, ActionHandler[Any]] = {}
        self._compensations: dict[str, CompensationHandler[Any]] = {}
        self._pipeline = Pipeline(
            name,
            self.handler_for,
            self._names,
            self.store,
            retry or RetryPolicy(),
            interceptors,
            self.metrics,
            trusted_reply_topic=self.reply_topic,
            allowed_namespaces=self.allowed_namespaces,
        )
        self._loop_config = LoopConfig(
            participant=name,
            command_topic=self.command_topic,
            reply_topic=self.reply_topic,
            dead_letter_topic=self.dead_letter_topic,
            group_id=self.group_id,
            client_id=client_id or f"saga-participant-{name}",
            kafka=self.kafka,
            max_in_flight=self.max_in_flight,
            reply_timeout=option(reply_timeout, "reply_timeout"),
            liveness_timeout=option(liveness_timeout, "liveness_timeout"),
            create_topics=option(create_topics, "create_topics"),
            topic_partitions=option(topic_partitions, "topic_partitions"),
            topic_replication_factor=option(topic_replication_factor, "topic_replication_factor"),
        )
        # A span per handled command: `tracer_provider`, else the one OTEL_* configures (none: off).
        self.tracing = ParticipantTracing(
            name, tracer_provider if tracer_provider is not None else provider_from_env(name)
        )
        self._stopping = asyncio.Event()
        self._store_open = False
        self._ready = False
        self._probes: ProbeServer | None = None

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

    def _names(self, kind: CommandKind) -> list[str]:
        return list(self._actions if kind is CommandKind.ACTION else self._compensations)

    # -- state -------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while consuming: store open, topics ensured, partitions assigned."""
        return self._ready

    @property
    def http_port(self) -> int | None:
        """The port the probe server is bound to (useful with http_port=0), once run() has started it."""
        return self._probes.bound_port if self._probes is not None else None

    def stop(self) -> None:
        """Ask run() to finish: what is in hand is finished or abandoned (never half-committed)."""
        self._stopping.set()

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        self.metrics.ready.labels(self.name).set(1 if ready else 0)

    async def __aenter__(self) -> Participant:
        """Open the store (run() does it; tests that call `saga_participants.testing.run_command` may)."""
        await self.store.open()
        self._store_open = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._store_open = False
        await self.store.close()

    # -- the service -------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT, in a fresh event loop."""
        asyncio.run(self.run())

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Serve until stop() (or SIGTERM/SIGINT when install_signal_handlers): probes, store, topics,
        consume. A busy probe port raises saga_plumbing.PortInUse at once."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        kafka_loop = KafkaLoop(
            self._loop_config, self._pipeline, self.metrics, self._stopping, self._set_ready, self.tracing
        )
        try:
            if self._http_port is not None:
                self._probes = ProbeServer(
                    self._http_host,
                    self._http_port,
                    liveness=kafka_loop.liveness,
                    readiness=lambda: None if self._ready else "not consuming yet",
                    registry=self.metrics.registry,
                )
                await self._probes.start()
                log.info(
                    "participant %s serving /healthz /readyz /metrics on %s:%s",
                    self.name,
                    self._http_host,
                    self._probes.bound_port,
                )
            try:
                async with self:
                    log.info(
                        "participant %s: store %r, actions %s, compensations %s, up to %d commands at once, "
                        "replies to %s, namespaces %s",
                        self.name,
                        self.store,
                        sorted(self._actions),
                        sorted(self._compensations),
                        self.max_in_flight,
                        self.reply_topic,
                        sorted(self.allowed_namespaces) if self.allowed_namespaces else "all",
                    )
                    await kafka_loop.run()
            except Stopped:
                pass
            finally:
                if self._probes is not None:
                    await self._probes.stop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        log.info("participant %s stopped", self.name)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("participant %s: %s received, finishing the message in hand", self.name, sig.name)
        self.stop()
