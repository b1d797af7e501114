"""The operator process: start-up order, the reply pump, probes and metrics.

Start-up: probes answer at once (not ready); the Kubernetes client and Kafka are connected, waiting out
transient outages (saga_plumbing.retry_transient); every Saga is listed and resumed from its `.status`
*before* replies are consumed, so no reply can arrive for a saga the operator does not know yet; then
the reply pump, the deadline timer and the Event poster run until shutdown. What a wait does not fix (a
port in use, a broker refusing the credentials, a topic it will not create) raises out of `start`, and
the process ends (runtime.handlers, __main__).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider

from saga_operator.adapters import kafka
from saga_operator.adapters.kube import TRANSIENT_API_ERRORS, KubeClient, ListingExpired
from saga_operator.adapters.shards import EVERYTHING, Ownership, ShardAssignor
from saga_operator.config import Settings, read_status_key
from saga_operator.domain.model import TERMINAL_PHASES
from saga_operator.runtime.coordinator import Coordinator
from saga_operator.runtime.metrics import Metrics
from saga_operator.runtime.replies import ReplyPump
from saga_operator.runtime.template_usage import TemplateUsage
from saga_operator.runtime.tracing import SagaTracing
from saga_plumbing import (
    TRANSIENT_KAFKA_ERRORS,
    Backoff,
    DeadLetterWriter,
    ProbeServer,
    TopicSpec,
    check_authentication,
    ensure_topics,
    retry_transient,
)
from saga_protocol import Command, command_topic, reply_topic

T = TypeVar("T")
COMMAND_TOPIC_PREFIX = command_topic("p").removesuffix("p")
log = logging.getLogger(__name__)
RESUME_CONCURRENCY = 64
# Readiness follows the dependencies: each is asked every PROBE_INTERVAL seconds, and a probe that does
# not answer within PROBE_TIMEOUT counts as a failure (a frozen API server hangs; it does not refuse).
PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 5.0


class OperatorApp:
    def __init__(self, settings: Settings, tracer_provider: TracerProvider | None = None) -> None:
        self.settings = settings
        # OpenTelemetry, when OTEL_* asks for it (__main__ reads them; saga_plumbing.tracing); None: off.
        self.tracing = SagaTracing(tracer_provider)
        self.metrics = Metrics()
        self.coordinator: Coordinator | None = None
        # The SAGAS and RUNNING of `kubectl get sagatemplates`, from the Sagas this process watches anyway.
        self.usage: TemplateUsage | None = None
        self.started = asyncio.Event()
        self.resumed_in: float | None = None
        self._kube: KubeClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters: DeadLetterWriter | None = None
        self._pump: ReplyPump | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._probes = ProbeServer(
            settings.http_host,
            settings.http_port,
            liveness=lambda: None,  # alive while the event loop answers: an outage is readiness, not liveness
            readiness=self.not_ready,
            registry=self.metrics.registry,
        )
        self._backoff = Backoff(initial=0.5, maximum=settings.max_backoff_seconds)
        # What start-up is doing (the /readyz body meanwhile); None once started.
        self._starting: str | None = "starting"
        self._kafka_healthy = False
        # Set by the dependency probes (see _probe_dependencies).
        self._kafka_reachable = False
        self._api_reachable = False
        self._dlq = settings.reply_dead_letter_topic
        # Several replicas share the sagas through the reply consumer's group (docs/architecture.md, "Several
        # replicas"); that needs a fixed set of reply topics every replica reads: SAGA_PARTICIPANTS.
        self._assignor = ShardAssignor() if settings.participants else None
        self._held: Ownership = EVERYTHING if self._assignor is None else self._assignor.ownership
        self.rebalances = 0
        self.metrics.ready.set_function(lambda: 0.0 if self.not_ready() else 1.0)
        self.metrics.reply_lag.set_function(lambda: self._pump.lag() if self._pump else 0.0)
        self.metrics.replies_pending.set_function(lambda: self._pump.pending() if self._pump else 0)
        self.metrics.list_shards(lambda: self.coordinator.ownership.shards if self.coordinator else ())
        self.metrics.count_sagas(lambda: self.coordinator.phase_counts() if self.coordinator else {})
        self.metrics.shards_owned.set_function(
            lambda: len(self.coordinator.ownership.shards) if self.coordinator else 0
        )

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything in order. Raises only what needs a person; everything started is stopped then."""
        began = time.monotonic()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.resumed_in = time.monotonic() - began
        self.started.set()
        assert self.coordinator is not None
        log.info("saga-operator ready in %.2fs with %d sagas", self.resumed_in, len(self.coordinator.sagas))

    async def _start(self) -> None:
        settings, brokers = self.settings, self.settings.kafka
        await self._probes.start()  # PortInUse: the caller ends the process
        self._kube = await self._step(
            "connecting to the Kubernetes API",
            lambda: KubeClient.connect(settings.kubeconfig, settings.kube_proxy_from_env),
            TRANSIENT_API_ERRORS,
        )
        # A refused login raises KafkaAuthenticationError (broker and principal named), in no transient tuple.
        await self._step(
            f"connecting to Kafka at {brokers.bootstrap_servers} as {brokers.principal}",
            lambda: check_authentication(brokers),
            TRANSIENT_KAFKA_ERRORS,
        )
        if settings.create_topics:
            await self._step("creating the Kafka topics", self._ensure_base_topics, TRANSIENT_KAFKA_ERRORS)
        producer = self._producer = kafka.new_producer(brokers)
        await self._step("starting the Kafka producer", producer.start, TRANSIENT_KAFKA_ERRORS)
        self._dead_letters = DeadLetterWriter(producer, self._dlq, source="saga-operator")
        status_key = read_status_key(settings.status_key_file)
        if status_key is None:
            log.warning(
                "SAGA_STATUS_KEY_FILE is not set: statuses are neither signed nor verified, so a status written by "
                "anyone else is adopted as the operator's own (set it in production: docs/operations.md)"
            )
        self.coordinator = Coordinator(
            self._kube,
            self._send,
            self._ensure_command_topics,
            self.metrics,
            settings.max_backoff_seconds,
            participants=settings.participants,
            ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
            status_key=status_key,
            tracing=self.tracing,
            write_behind=settings.status_writes == "behind",
            coalesce_seconds=settings.status_coalesce_ms / 1000,
        )
        # Sharded: it owns nothing until the group assigns it shards; the listing below only loads the sagas.
        self.coordinator.ownership = self._held
        coordinator = self.coordinator
        self.usage = TemplateUsage(self._kube, lambda: coordinator.ownership)
        consumer = self._consumer = kafka.new_reply_consumer(
            brokers,
            settings.consumer_group,
            assignor=self._assignor,
            session_timeout_seconds=settings.group_session_timeout_seconds,
            heartbeat_seconds=settings.group_heartbeat_seconds,
        )
        # Created before the resume: every command re-sent meanwhile adds its participant's reply topic.
        pump = self._pump = ReplyPump(
            consumer,
            self.coordinator,
            self._dead_letters,
            self.metrics,
            self._retry,
            rebalance=self if self._assignor is not None else None,
        )
        pump.follow(settings.participants)
        self._starting = "resuming the sagas"
        await self._resume_all()
        pump.follow(self._participants_in_flight())
        await self._step("starting the reply consumer", consumer.start, TRANSIENT_KAFKA_ERRORS)
        self._kafka_healthy = True
        self._kafka_reachable = self._api_reachable = True  # both just answered the start-up
        self._tasks = [
            asyncio.create_task(pump.run(), name="reply-pump"),
            asyncio.create_task(self._probe_dependencies(), name="probes"),
            asyncio.create_task(self.coordinator.run_deadlines(), name="deadlines"),
            asyncio.create_task(self.coordinator.post_events(), name="events"),
            asyncio.create_task(self.usage.run(), name="template-usage"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_end)
        self._starting = None

    async def _step(
        self, what: str, attempt: Callable[[], Awaitable[T]], transient: tuple[type[BaseException], ...]
    ) -> T:
        """One step of the start-up: /readyz says which meanwhile."""
        self._starting = what
        return await self._retry(what, attempt, transient)

    async def _retry(
        self, what: str, attempt: Callable[[], Awaitable[T]], transient: tuple[type[BaseException], ...]
    ) -> T:
        return await retry_transient(what, attempt, transient=transient, backoff=self._backoff)

    async def stop(self) -> None:
        if self.coordinator is not None and self._assignor is not None:
            self.coordinator.release(Ownership(partitions=0))  # drive nothing more: the others take over
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pump is not None:
            await self._pump.stop()
        if self.coordinator is not None:
            await self.coordinator.drain()
            with contextlib.suppress(Exception):
                # Not needed for safety (a crash loses the same), only so that the log is up to date.
                await asyncio.wait_for(self.coordinator.write_all_behind(), 10)
        if self._pump is not None and self._consumer is not None and self._starting is None:
            # What is done is committed before the group hears this replica leave (consumer.stop): its
            # partitions' next owners start after it instead of reading it again.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump.commit(), 5)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        if self._kube is not None:
            await self._kube.close()
        await self._probes.stop()

    def not_ready(self) -> str | None:
        """Why the operator cannot do its work now (the body of a 503 on /readyz), or None: ready."""
        if self._starting is not None or self.coordinator is None:
            return f"starting: {self._starting}"
        stopped = [task.get_name() for task in self._tasks if task.done()]
        if stopped:
            return f"stopped: {', '.join(stopped)} (see the log)"
        if not (self._kafka_healthy and self._kafka_reachable and (self._pump is None or self._pump.healthy)):
            return f"Kafka at {self.settings.kafka.bootstrap_servers} does not answer"
        if not (self._api_reachable and self.coordinator.api_healthy):
            return "the Kubernetes API server does not answer"
        if self.coordinator.ownership.sharded and not self.coordinator.ownership.shards:
            return f"owns no shard of the sagas: waiting for the consumer group {self.settings.consumer_group}"
        lag = self._pump.lag() if self._pump is not None else 0.0
        if lag > self.settings.reply_stall_seconds:
            return f"a reply read {lag:.0f}s ago is not applied yet (its saga's status writes hang or fail)"
        return None

    async def _probe_dependencies(self) -> None:
        """Ask the API server and the broker, every few seconds, whether they answer.

        Fix (chaos run, docs/chaos.md): readiness used to depend only on `_kafka_healthy` and
        `coordinator.api_healthy`, which flip on errors that never surface in these outages: aiokafka's
        `getmany` rides out a dead broker by returning empty batches, and requests to a frozen API
        server hang instead of failing. So /readyz said 200 through both. These probes are cheap (a
        GET /version, a Metadata request) and bounded by PROBE_TIMEOUT.
        """
        assert self._kube is not None and self._producer is not None
        kube, producer = self._kube, self._producer
        while True:
            self._api_reachable = await self._probe("Kubernetes API", lambda: kube.ping(PROBE_TIMEOUT))
            self._kafka_reachable = await self._probe("Kafka", producer.client.fetch_all_metadata)
            await asyncio.sleep(PROBE_INTERVAL)

    async def _probe(self, what: str, action: Any) -> bool:
        try:
            await asyncio.wait_for(action(), PROBE_TIMEOUT)
        except Exception as exc:
            log.warning("%s probe failed (%s: %s): not ready", what, type(exc).__name__, exc)
            return False
        return True

    # ---- Kafka --------------------------------------------------------------------------------

    async def _ensure_base_topics(self) -> None:
        names = [self._dlq]
        for participant in self.settings.participants:
            names += [command_topic(participant), reply_topic(participant)]
        await self._ensure_topics(names)

    async def _ensure_command_topics(self, names: list[str]) -> None:
        """The coordinator's first command to a participant: its reply topic is read from now on (before the
        command leaves, so its reply cannot be missed), and both topics are created where the operator may."""
        participants = [name.removeprefix(COMMAND_TOPIC_PREFIX) for name in names]
        if self._pump is not None:
            self._pump.follow(participants)
        if self.settings.create_topics:
            await self._ensure_topics([*names, *(reply_topic(p) for p in participants)])

    def _participants_in_flight(self) -> set[str]:
        """Every participant named by a saga that is not finished: replies to it may be on their way."""
        assert self.coordinator is not None
        names: set[str] = set()
        for entry in self.coordinator.sagas.values():
            if entry.phase in TERMINAL_PHASES:
                continue
            spec = entry.run_spec
            if spec is not None:
                names.update(step.participant for step in spec.steps)
        return names

    async def _ensure_topics(self, names: list[str]) -> None:
        """Create the topics that are missing (SAGA_CREATE_TOPICS only)."""
        settings = self.settings
        topics = [TopicSpec(n, settings.topic_partitions, settings.topic_replication_factor) for n in names]
        await ensure_topics(settings.kafka, topics, client_id=kafka.client_id(settings.kafka))

    async def _send(self, topic: str, command: Command, trace: Mapping[str, str] | None) -> None:
        assert self._producer is not None
        await kafka.send_command(self._producer, topic, command, trace)

    # ---- the shards (the pump's Rebalance) ---------------------------------------------------------

    async def revoked(self) -> None:
        """The group rebalances (a replica came, left or died; a reply topic was added): stop driving every
        saga before the pump commits. The group's protocol is eager: all partitions go, then come back."""
        assert self.coordinator is not None
        self._held = self.coordinator.ownership
        # The statuses written behind go to the store first, so the next owners resume from the latest log (not
        # needed for safety: a log written behind is resumed as such; release() drops what could not be written).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.coordinator.write_all_behind(), 5)
        self.coordinator.release(Ownership(partitions=0))

    async def assigned(self) -> None:
        """The new shards: list the Sagas and resume those of shards gained; reconcile those of shards kept."""
        assert self._assignor is not None and self.coordinator is not None and self._kube is not None
        began = time.monotonic()
        new, held = self._assignor.ownership, self._held
        gained = new.shards if new.partitions != held.partitions else new.shards - held.shards
        self.rebalances += 1
        count = 0
        token: str | None = None
        while True:
            items, token = await self._list_page(token)
            count += sum(1 for body in items if new.owns((body.get("metadata") or {}).get("uid", "")))
            await self.coordinator.acquire(new, items, gained)
            self.saw_sagas(items)
            del items
            if token is None:
                break
        self._held = new
        if self.usage is not None:
            self.usage.recount_all()  # the templates of the shards gained are this replica's to write now
        self._pump_follow_in_flight()
        log.info(
            "owning shards %s of %d (gained %s): %d sagas, resumed in %.2fs",
            sorted(new.shards),
            new.partitions or 0,
            sorted(gained),
            count,
            time.monotonic() - began,
        )

    def _pump_follow_in_flight(self) -> None:
        if self._pump is not None:
            self._pump.follow(self._participants_in_flight())

    # ---- Kubernetes ---------------------------------------------------------------------------

    async def _resume_all(self) -> None:
        """Resume every Saga from its status, one page of the listing at a time."""
        assert self._kube is not None and self.coordinator is not None
        coordinator = self.coordinator
        gate = asyncio.Semaphore(RESUME_CONCURRENCY)

        async def resume(body: dict[str, Any]) -> None:
            async with gate:
                try:
                    await coordinator.observe(body, None)
                except Exception:
                    # One saga must not stop the start-up of all the others (it used to: Kopf ran the start-up
                    # again and again, "address already in use", while /healthz said 200). Its own state stays as
                    # stored; the watch brings it again.
                    meta = body.get("metadata") or {}
                    coordinator.metrics.sagas_unresumable.inc()
                    log.exception("saga %s/%s could not be resumed", meta.get("namespace"), meta.get("name"))

        token: str | None = None
        while True:
            items, token = await self._list_page(token)
            await asyncio.gather(*(resume(body) for body in items))
            self.saw_sagas(items)
            del items  # let this page's bodies go before the next one arrives
            if token is None:
                break
        log.info("resumed %d sagas from their status", len(coordinator.sagas))

    def saw_sagas(self, bodies: list[dict[str, Any]], event_type: str | None = None) -> None:
        """Sagas listed or watched: their templates' usage counts follow."""
        if self.usage is not None:
            for body in bodies:
                self.usage.saw_saga(body, event_type)

    async def _list_page(self, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        return await self._retry("listing Sagas", functools.partial(self._page, token), TRANSIENT_API_ERRORS)

    async def _page(self, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        assert self._kube is not None
        try:
            return await self._kube.list_saga_page(self.settings.namespace, token)
        except ListingExpired:
            # Start over: sagas already resumed are known, and observing one again changes nothing.
            log.info("Saga listing expired part-way; listing again from the start")
            return await self._kube.list_saga_page(self.settings.namespace, None)


def _log_end(task: asyncio.Task[Any]) -> None:
    """These tasks run until shutdown: one that ends early is logged here, and /readyz names it."""
    if task.cancelled():
        return
    exc = task.exception()
    log.error("%s stopped: %s", task.get_name(), f"{type(exc).__name__}: {exc}" if exc else "returned", exc_info=exc)
