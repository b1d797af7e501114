"""The operator process: start-up order, the reply pump, probes and metrics.

Start-up: probes answer at once (not ready); the Kubernetes client and Kafka are connected with
retries; every Saga is listed and resumed from its `.status` *before* replies are consumed, so no
reply can arrive for a saga the operator does not know yet; then the reply pump, the deadline timer
and the Event poster run until shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from saga_operator.adapters import kafka
from saga_operator.adapters.kube import KubeClient, ListingExpired
from saga_operator.config import Settings
from saga_operator.runtime.coordinator import Coordinator
from saga_operator.runtime.metrics import Metrics
from saga_protocol import Command, DecodeError, Reply, command_topic, dead_letter_topic, decode_reply

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
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: web.AppRunner | None = None
        self._kafka_healthy = False
        # Set by the dependency probes (see _probe_dependencies).
        self._kafka_reachable = False
        self._api_reachable = False
        self._dlq = dead_letter_topic(settings.reply_topic)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        began = time.monotonic()
        await self._serve_http()
        self._kube = await self._retry(
            "Kubernetes API", lambda: KubeClient.connect(self.settings.kubeconfig, self.settings.kube_proxy_from_env)
        )
        await self._retry("Kafka topics", self._ensure_base_topics)
        self._producer = kafka.new_producer(self.settings.kafka.bootstrap_servers)
        await self._retry("Kafka producer", self._producer.start)
        self.coordinator = Coordinator(
            self._kube,
            self._send,
            self._ensure_topics,
            self.metrics,
            self.settings.reply_topic,
            self.settings.max_backoff_seconds,
        )
        await self._resume_all()
        self._consumer = kafka.new_reply_consumer(
            self.settings.kafka.bootstrap_servers, self.settings.reply_topic, self.settings.consumer_group
        )
        await self._retry("Kafka consumer", self._consumer.start)
        self._kafka_healthy = True
        self._kafka_reachable = self._api_reachable = True  # both just answered the start-up
        self._tasks = [
            asyncio.create_task(self._pump_replies(), name="reply-pump"),
            asyncio.create_task(self._probe_dependencies(), name="probes"),
            asyncio.create_task(self.coordinator.run_deadlines(), name="deadlines"),
            asyncio.create_task(self.coordinator.post_events(), name="events"),
        ]
        self.resumed_in = time.monotonic() - began
        self.started.set()
        log.info("saga-operator ready in %.2fs with %d sagas", self.resumed_in, len(self.coordinator.sagas))

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
        if self._http is not None:
            await self._http.cleanup()

    def ready(self) -> bool:
        healthy = (
            self.started.is_set()
            and self._kafka_healthy
            and self._kafka_reachable
            and self._api_reachable
            and self.coordinator is not None
            and self.coordinator.api_healthy
            and all(not t.done() for t in self._tasks)
        )
        self.metrics.ready.set(1 if healthy else 0)
        return healthy

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

    async def _retry(self, what: str, action: Any) -> Any:
        """Dependencies that are not there yet (Kafka still starting, the API server away) are waited
        for with backoff; the readiness probe says not-ready meanwhile."""
        delay = 0.5
        while True:
            try:
                return await action()
            except Exception as exc:
                log.warning("%s not available (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.max_backoff_seconds)

    # ---- Kafka --------------------------------------------------------------------------------

    async def _ensure_base_topics(self) -> None:
        names = [self.settings.reply_topic, self._dlq]
        names += [command_topic(p) for p in self.settings.participants]
        await self._ensure_topics(names)

    async def _ensure_topics(self, names: list[str]) -> None:
        await kafka.ensure_topics(
            self.settings.kafka.bootstrap_servers,
            names,
            self.settings.topic_partitions,
            self.settings.topic_replication_factor,
        )

    async def _send(self, topic: str, command: Command) -> None:
        assert self._producer is not None
        await kafka.send_command(self._producer, topic, command)

    async def _pump_replies(self) -> None:
        """Read replies in batches; apply each saga's replies in order (sagas in parallel); commit the
        offsets only after every status write of the batch: at-least-once, end to end."""
        assert self._consumer is not None and self.coordinator is not None
        consumer = self._consumer
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                self._kafka_healthy = True
            except Exception as exc:
                self._kafka_healthy = False
                log.warning("reading replies failed (%s); retrying", exc)
                await asyncio.sleep(1)
                continue
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
            await self._retry("Kafka offset commit", consumer.commit)

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
        assert self._producer is not None
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
        producer = self._producer
        await self._retry("dead-letter topic", lambda: kafka.dead_letter(producer, self._dlq, message, reason, detail))

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
            items, token = await self._retry("listing Sagas", functools.partial(page, token))
            await asyncio.gather(*(resume(body) for body in items))
            del items  # let this page's bodies go before the next one arrives
            if token is None:
                break
        log.info("resumed %d sagas from their status", len(coordinator.sagas))

    # ---- HTTP: probes and metrics -------------------------------------------------------------

    async def _serve_http(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, self.settings.http_host, self.settings.http_port)
        await site.start()

    async def _healthz(self, _: web.Request) -> web.Response:
        # Alive as long as the event loop answers: a dependency outage is readiness, not liveness.
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        self.ready()
        if self.coordinator is not None:
            for phase, count in self.coordinator.phase_counts().items():
                self.metrics.sagas.labels(phase).set(count)
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
