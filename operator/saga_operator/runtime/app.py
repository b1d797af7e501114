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
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from saga_operator.adapters import kafka
from saga_operator.adapters.kube import TRANSIENT_API_ERRORS, KubeClient, ListingExpired
from saga_operator.config import Settings
from saga_operator.runtime.coordinator import Coordinator
from saga_operator.runtime.metrics import Metrics
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
from saga_protocol import Command, DecodeError, Reply, command_topic, dead_letter_topic, decode_reply

T = TypeVar("T")
log = logging.getLogger(__name__)
RESUME_CONCURRENCY = 64
# Readiness follows the dependencies: each is asked every PROBE_INTERVAL seconds, and a probe that does
# not answer within PROBE_TIMEOUT counts as a failure (a frozen API server hangs; it does not refuse).
PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 5.0


class OperatorApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.coordinator: Coordinator | None = None
        self.started = asyncio.Event()
        self.resumed_in: float | None = None
        self._kube: KubeClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters: DeadLetterWriter | None = None
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
        self._dlq = dead_letter_topic(settings.reply_topic)
        self.metrics.ready.set_function(lambda: 0.0 if self.not_ready() else 1.0)
        self.metrics.count_sagas(lambda: self.coordinator.phase_counts() if self.coordinator else {})

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
        self.coordinator = Coordinator(
            self._kube,
            self._send,
            self._ensure_topics if settings.create_topics else _topics_exist,
            self.metrics,
            settings.reply_topic,
            settings.max_backoff_seconds,
        )
        self._starting = "resuming the sagas"
        await self._resume_all()
        consumer = self._consumer = kafka.new_reply_consumer(brokers, settings.reply_topic, settings.consumer_group)
        await self._step("starting the reply consumer", consumer.start, TRANSIENT_KAFKA_ERRORS)
        self._kafka_healthy = True
        self._kafka_reachable = self._api_reachable = True  # both just answered the start-up
        self._tasks = [
            asyncio.create_task(self._pump_replies(), name="reply-pump"),
            asyncio.create_task(self._probe_dependencies(), name="probes"),
            asyncio.create_task(self.coordinator.run_deadlines(), name="deadlines"),
            asyncio.create_task(self.coordinator.post_events(), name="events"),
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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.coordinator is not None:
            await self.coordinator.drain()
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
        if not (self._kafka_healthy and self._kafka_reachable):
            return f"Kafka at {self.settings.kafka.bootstrap_servers} does not answer"
        if not (self._api_reachable and self.coordinator.api_healthy):
            return "the Kubernetes API server does not answer"
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
        names = [self.settings.reply_topic, self._dlq]
        names += [command_topic(p) for p in self.settings.participants]
        await self._ensure_topics(names)

    async def _ensure_topics(self, names: list[str]) -> None:
        """Create the topics that are missing (SAGA_CREATE_TOPICS only)."""
        settings = self.settings
        topics = [TopicSpec(n, settings.topic_partitions, settings.topic_replication_factor) for n in names]
        await ensure_topics(settings.kafka, topics, client_id=kafka.client_id(settings.kafka))

    async def _send(self, topic: str, command: Command) -> None:
        assert self._producer is not None
        await kafka.send_command(self._producer, topic, command)

    async def _pump_replies(self) -> None:
        """Read replies in batches; apply each saga's replies in order (sagas in parallel); commit the
        offsets only after every status write of the batch: at-least-once, end to end."""
        assert self._consumer is not None and self.coordinator is not None
        consumer = self._consumer

        async def read() -> dict[Any, list[Any]]:
            try:
                batch: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=500, max_records=500)
            except TRANSIENT_KAFKA_ERRORS:
                self._kafka_healthy = False
                raise
            self._kafka_healthy = True
            return batch

        while True:
            batch = await self._retry("reading replies", read, TRANSIENT_KAFKA_ERRORS)
            if not batch:
                continue
            received = time.time()
            by_saga: dict[str, list[tuple[Any, Reply]]] = defaultdict(list)
            for messages in batch.values():
                for message in messages:
                    try:
                        reply = decode_reply(message.value, message.headers)
                    except DecodeError as exc:
                        await self._set_aside(message, exc.reason, exc.detail)
                        continue
                    by_saga[reply.saga_uid].append((message, reply))
            await asyncio.gather(*(self._apply_in_order(items, received) for items in by_saga.values()))
            await self._retry("committing the replies' offsets", consumer.commit, TRANSIENT_KAFKA_ERRORS)

    async def _apply_in_order(self, items: list[tuple[Any, Reply]], received: float) -> None:
        assert self.coordinator is not None
        for message, reply in items:
            try:
                ignored = await self.coordinator.apply_reply(reply, received)
            except Exception as exc:
                # Fix (chaos run, docs/chaos.md): an exception here (Gone: the saga was deleted after its
                # finalizer was removed by hand; or any bug) used to end the reply pump for good while
                # /healthz kept saying ok. Set the reply aside instead: the step's timeout asks again.
                log.exception("reply for saga %s step %s could not be applied", reply.saga_uid, reply.step)
                await self._set_aside(message, "NotApplied", f"{type(exc).__name__}: {exc}")
                continue
            for effect in ignored:
                if effect.invalid:
                    await self._set_aside(message, effect.reason, f"step {reply.step} attempt {reply.attempt}")

    async def _set_aside(self, message: Any, reason: str, detail: str) -> None:
        assert self._dead_letters is not None
        self.metrics.malformed.labels(reason).inc()
        log.warning(
            "reply at %s[%d]@%d set aside to %s: %s (%s)",
            message.topic,
            message.partition,
            message.offset,
            self._dlq,
            reason,
            detail,
        )
        await self._dead_letters.write(message, reason, detail)

    # ---- Kubernetes ---------------------------------------------------------------------------

    async def _resume_all(self) -> None:
        """Resume every Saga from its status, one page of the listing at a time."""
        assert self._kube is not None and self.coordinator is not None
        kube, coordinator, namespace = self._kube, self.coordinator, self.settings.namespace
        gate = asyncio.Semaphore(RESUME_CONCURRENCY)

        async def resume(body: dict[str, Any]) -> None:
            async with gate:
                await coordinator.observe(body, None)

        async def page(token: str | None) -> tuple[list[dict[str, Any]], str | None]:
            try:
                return await kube.list_saga_page(namespace, token)
            except ListingExpired:
                # Start over: sagas already resumed are known, and observing one again changes nothing.
                log.info("Saga listing expired part-way; listing again from the start")
                return await kube.list_saga_page(namespace, None)

        token: str | None = None
        while True:
            items, token = await self._retry("listing Sagas", functools.partial(page, token), TRANSIENT_API_ERRORS)
            await asyncio.gather(*(resume(body) for body in items))
            del items  # let this page's bodies go before the next one arrives
            if token is None:
                break
        log.info("resumed %d sagas from their status", len(coordinator.sagas))


def _log_end(task: asyncio.Task[Any]) -> None:
    """These tasks run until shutdown: one that ends early is logged here, and /readyz names it."""
    if task.cancelled():
        return
    exc = task.exception()
    log.error("%s stopped: %s", task.get_name(), f"{type(exc).__name__}: {exc}" if exc else "returned", exc_info=exc)


async def _topics_exist(names: list[str]) -> None:
    """Without SAGA_CREATE_TOPICS an admin has created every topic: a command to a participant whose topic
    is missing fails at the send and is retried by the step's timeout, like a broker that is away."""
