"""The three measurements: the floor, K sagas at concurrency C, and N sagas present at start-up.

Timing sources, all on one machine and one clock:

* the driver's own `time.time()` when it sends a request or sees a watch event;
* the Saga's status timestamps (`startedAt`, `finishedAt`; microseconds) written by the operator;
* the messages' `sentAt` (microseconds): the operator stamps a command after its status write and just
  before producing it; the echo participant stamps a reply just before producing it. The topics are read
  back after the run, so measuring costs the system under test nothing.

A step's `finishedAt` and the next step's `dispatchedAt` cannot measure the coordinator's overhead: the
operator writes both in one transition with one clock reading ("one transition, one write"), so they are
equal by construction. The overhead per step is therefore the time from the participant's reply
(`sentAt`) to the operator's next command (`sentAt`): Kafka delivery of the reply, decoding, the
transition, the status PATCH, building the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from saga_harness.services import Service, operator_service
from saga_operator.adapters import kafka as operator_kafka
from saga_operator.adapters.kube import status_patch
from saga_operator.domain.events import ReplyReceived, Start
from saga_operator.domain.model import FINALIZER, GROUP, KIND, PLURAL, VERSION, SagaSpec, SagaStatus
from saga_operator.domain.transition import transition
from saga_plumbing import KafkaSettings
from saga_protocol import Command, CommandKind, Outcome, Reply, command_topic, decode_reply, idempotency_key
from saga_testenv import procs
from saga_testenv.kafka import TopicSpec, ensure_topics
from saga_testenv.stack import StackEndpoints

from . import procinfo, stats
from .kube import Kube, KubeError, load_configuration

Log = Callable[[str], None]
# as the operator's adapter passes it: custom resources take JSON merge patches
_MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
TERMINAL = ("Succeeded", "Compensated", "Failed")
STEPS = 3
PAYLOAD = {"buyer": "user-1", "video": "video-1", "agent": "agent-1", "priceCents": 499}


@dataclass
class Bench:
    """What every phase shares: where to talk to, names unique to this run, our own processes."""

    endpoints: StackEndpoints
    kube: Kube
    run_dir: Path
    concurrency: int
    partitions: int
    log: Log
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    roles: dict[int, str] = field(default_factory=dict)  # pid -> role, for the CPU table
    echo: Service | None = None
    profile: bool = False  # sample the operator with py-spy during the measured parts

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(f"bench-{self.run_id}-p{i}" for i in range(1, STEPS + 1))

    @property
    def floor_participant(self) -> str:
        return f"bench-{self.run_id}-floor"

    def reply_topic(self, phase: str) -> str:
        return f"saga.replies.bench-{self.run_id}-{phase}"

    def namespace(self, phase: str) -> str:
        return f"saga-bench-{self.run_id}-{phase}"

    def command_topics(self) -> list[str]:
        return [command_topic(p) for p in self.participants]

    def all_topics(self) -> list[str]:
        return [
            *self.command_topics(),
            command_topic(self.floor_participant),
            *(self.reply_topic(p) for p in ("floor", "main", "scale")),
        ]

    # ---- processes ----------------------------------------------------------------------------

    def profiler(self, pid: int, name: str) -> Profiler | None:
        return Profiler(pid, self.run_dir / f"py-spy-{name}.txt", self.log) if self.profile else None

    async def start_echo(self) -> None:
        topics = [*self.all_topics()[: STEPS + 1]]
        await ensure_topics(
            self.endpoints.kafka_bootstrap, [TopicSpec(t, partitions=self.partitions) for t in self.all_topics()]
        )
        (port,) = procs.free_ports(1)
        argv = [
            sys.executable,
            "-m",
            "saga_harness.bench.echo",
            "--bootstrap",
            self.endpoints.kafka_bootstrap,
            "--topics",
            ",".join(topics),
            "--group",
            f"saga-bench-echo-{self.run_id}",
            "--http-port",
            str(port),
        ]
        self.echo = Service("echo", argv, self.endpoints.env(), self.run_dir, port)
        await self._start(self.echo, "echo participant")

    def operator(self, phase: str) -> Service:
        run_dir = self.run_dir / phase
        run_dir.mkdir(parents=True, exist_ok=True)
        service = operator_service(
            run_dir,
            self.endpoints.env(),
            SAGA_NAMESPACE=self.namespace(phase),
            SAGA_REPLY_TOPIC=self.reply_topic(phase),
            SAGA_CONSUMER_GROUP=f"saga-bench-{self.run_id}-{phase}",
            SAGA_PARTICIPANTS=",".join(self.participants),
            SAGA_TOPIC_PARTITIONS=str(self.partitions),
        )
        # For A/B experiments (an operator with a change, or under a profiler): the command to run instead.
        override = os.environ.get("SAGA_BENCH_OPERATOR_COMMAND")
        if override:
            service.argv = shlex.split(override)
        return service

    async def _start(self, service: Service, role: str) -> None:
        service.start(wait=False)
        assert service.record is not None
        self.roles[service.record.pid] = role
        await asyncio.to_thread(service.wait_ready, 120.0)

    async def stop(self, service: Service | None) -> None:
        if service is not None:
            await asyncio.to_thread(service.stop)

    async def delete_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.endpoints.kafka_bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            mine = [t for t in existing if f"bench-{self.run_id}" in t]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    async def clean_namespace(self, phase: str, operator: Service | None, wait_seconds: float = 600.0) -> None:
        """Delete the phase's namespace. Its Sagas carry the operator's finalizer: a running operator
        releases them (each deleted saga is finished, so it just drops the finalizer); without one, or
        past `wait_seconds`, the finalizers are dropped here (nothing is running any more)."""
        namespace = self.namespace(phase)
        if not await self.kube.namespace_exists(namespace):
            return
        await self.kube.delete_namespace(namespace)
        deadline = time.monotonic() + wait_seconds
        while operator is not None and operator.running() and time.monotonic() < deadline:
            if not await self.kube.namespace_exists(namespace):
                return
            await asyncio.sleep(1.0)

        async def release(name: str) -> None:
            with contextlib.suppress(KubeError):
                await self.kube.request(
                    "PATCH",
                    self.kube.sagas_path(namespace, name),
                    b'{"metadata":{"finalizers":null}}',
                    content_type="application/merge-patch+json",
                )

        items, _ = await self.kube.list_sagas(namespace)
        names = [item["metadata"]["name"] for item in items if item["metadata"].get("finalizers")]
        await _gather_limited(self.concurrency, [lambda n=n: release(n) for n in names])  # type: ignore[misc]


class Profiler:
    """py-spy (not a dependency: `pip install py-spy`) sampling a process until stopped; the output is
    collapsed stacks, one line per stack with its sample count, for flamegraph tools or grep."""

    def __init__(self, pid: int, out: Path, log: Log) -> None:
        self.out = out
        self.log = log
        self.process = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        await asyncio.to_thread(self.process.wait, 30)
        self.log(f"profile of the operator: {self.out}")


# ---- Sagas and their statuses -------------------------------------------------------------------


def saga_manifest(name: str, participants: Iterable[str], timeout_seconds: int = 30) -> dict[str, Any]:
    """A 3-step saga in a line, shaped like the buy-video saga (action + compensation per step)."""
    steps = [
        {
            "name": f"step-{index}",
            "participant": participant,
            "action": "do",
            "compensation": "undo",
            "timeoutSeconds": timeout_seconds,
        }
        for index, participant in enumerate(participants, start=1)
    ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"payload": dict(PAYLOAD), "steps": steps},
    }


def happy_path(manifest: dict[str, Any], now: datetime) -> list[SagaStatus]:
    """The statuses the operator writes for this saga on the happy path, from the pure core itself:
    step 1 dispatched, step 2 dispatched, step 3 dispatched, Succeeded."""
    spec = SagaSpec.model_validate(manifest["spec"])
    status, _ = transition(spec, SagaStatus(), Start(now))
    out = [status]
    for step in spec.steps:
        reply = Reply(
            message_id=str(uuid.uuid4()),
            saga_uid="0",
            step=step.name,
            kind=CommandKind.ACTION,
            attempt=1,
            idempotency_key=idempotency_key("0", step.name),
            participant=step.participant,
            outcome=Outcome.SUCCEEDED,
            result={},
            sent_at=now,
        )
        status, _ = transition(spec, status, ReplyReceived(reply, now))
        out.append(status)
    for written in out:
        written.observed_generation = 1
    return out


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


async def _gather_limited(concurrency: int, jobs: Iterable[Callable[[], Awaitable[None]]]) -> None:
    queue = list(jobs)
    queue.reverse()

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---- reading the topics back --------------------------------------------------------------------


async def read_topics(bootstrap: str, topics: list[str]) -> list[dict[str, Any]]:
    """Every message body (JSON) on `topics` from the beginning to their current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[dict[str, Any]] = []
        pending = {tp for tp in partitions if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=5000)
            for records in batch.values():
                out.extend(json.loads(r.value) for r in records)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()


# ---- 1. the floor -------------------------------------------------------------------------------


async def floor_status_patches(bench: Bench, objects: int) -> dict[str, Any]:
    """The operator's status writes without the operator: for each of `objects` Sagas (created first,
    not timed), the 4 status PATCHes of its happy path in order (compare-and-set on resourceVersion,
    the operator's own bodies), C objects at a time, each PATCH sent as soon as the previous answer is
    back. Once with the lean aiohttp client, once with kubernetes_asyncio (the operator's client), each
    on its own set of objects."""
    namespace = bench.namespace("floor")
    await bench.kube.create_namespace(namespace)
    c = bench.concurrency
    template = saga_manifest("floor", bench.participants)
    statuses = happy_path(template, datetime.now(UTC))
    for seq, status in enumerate(statuses, start=1):
        status.seq = seq

    async def create(prefix: str) -> dict[str, str]:
        versions: dict[str, str] = {}

        async def one(index: int) -> None:
            body = await bench.kube.create_saga(namespace, saga_manifest(f"{prefix}-{index:05d}", bench.participants))
            versions[body["metadata"]["name"]] = body["metadata"]["resourceVersion"]

        await _gather_limited(min(c, 50), [lambda i=i: one(i) for i in range(objects)])  # type: ignore[misc]
        return versions

    async def run(client: str, patch_one: Callable[[str, dict[str, Any]], Awaitable[str]]) -> dict[str, Any]:
        versions = await create(client.replace("_", "-"))
        queue = sorted(versions, reverse=True)
        before = await bench.kube.write_requests()
        before_procs = procinfo.all_processes()
        latencies: list[float] = []

        async def worker() -> None:
            while queue:
                name = queue.pop()
                for status in statuses:
                    t0 = time.perf_counter()
                    versions[name] = await patch_one(name, status_patch(status, versions[name]))
                    latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        wall = time.perf_counter() - started
        after_procs = procinfo.all_processes()
        after = await bench.kube.write_requests()
        counted = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(f"{PLURAL} PATCH status"))
        result: dict[str, Any] = {
            "client": client,
            "objects": objects,
            "patches": len(latencies),
            "apiserver_counted": counted,
            "wall_seconds": round(wall, 3),
            "patches_per_second": round(len(latencies) / wall, 1),
            "latency_seconds": stats.summary(latencies),
            "cpu_seconds_by_process": procinfo.busiest(before_procs, after_procs, bench.roles, top=8),
        }
        result["apiserver_cpu_ms_per_patch"] = _per(
            role_cpu(result["cpu_seconds_by_process"], "kube-apiserver"), counted
        )
        bench.log(
            f"floor: {client}: {result['patches_per_second']} status patches/s "
            f"(p50 {result['latency_seconds']['p50']}s, p99 {result['latency_seconds']['p99']}s)"
        )
        return result

    async def patch_aiohttp(name: str, patch: dict[str, Any]) -> str:
        body = await bench.kube.patch_status(namespace, name, json.dumps(patch).encode())
        return str(body["metadata"]["resourceVersion"])

    lean = await run("aiohttp", patch_aiohttp)

    from kubernetes_asyncio import client as k8s_client
    from kubernetes_asyncio.client.exceptions import ApiException

    configuration = await load_configuration(bench.endpoints.kubeconfig)
    configuration.connection_pool_maxsize = max(64, c)
    api_client = k8s_client.ApiClient(configuration)
    custom = k8s_client.CustomObjectsApi(api_client)

    async def patch_generated(name: str, patch: dict[str, Any]) -> str:
        try:
            body = await custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, patch, **_MERGE
            )
        except ApiException as exc:
            raise KubeError(exc.status, "PATCH", name, str(exc.reason)) from None
        return str(body["metadata"]["resourceVersion"])

    try:
        generated = await run("kubernetes_asyncio", patch_generated)
    finally:
        await api_client.close()
    return {"objects": objects, "concurrency": c, "aiohttp": lean, "kubernetes_asyncio": generated}


async def floor_kafka(bench: Bench, round_trips: int) -> dict[str, Any]:
    """Request/reply through Kafka and the echo participant, as one saga step would go without the API
    server: the operator's producer settings (idempotent, acks=all, send_and_wait), C in flight."""
    bootstrap = bench.endpoints.kafka_bootstrap
    topic = command_topic(bench.floor_participant)
    reply_topic = bench.reply_topic("floor")
    producer = operator_kafka.new_producer(KafkaSettings(bootstrap_servers=bootstrap))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    waiting: dict[str, asyncio.Future[float]] = {}

    async def pump() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    reply = decode_reply(record.value, [(k, bytes(v)) for k, v in (record.headers or ())])
                    future = waiting.pop(reply.saga_uid, None)
                    if future is not None and not future.done():
                        future.set_result(now)

    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(reply_topic, p) for p in sorted(consumer.partitions_for_topic(reply_topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        pumping = asyncio.create_task(pump())
        latencies: list[float] = []

        async def one(measure: bool) -> None:
            uid = str(uuid.uuid4())
            command = Command(
                message_id=str(uuid.uuid4()),
                saga_uid=uid,
                saga_namespace="floor",
                saga_name="floor",
                step="step-1",
                kind=CommandKind.ACTION,
                action="do",
                attempt=1,
                idempotency_key=idempotency_key(uid, "step-1"),
                payload=dict(PAYLOAD),
                reply_topic=reply_topic,
                sent_at=datetime.now(UTC),
            )
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            waiting[uid] = future
            t0 = time.perf_counter()
            await operator_kafka.send_command(producer, topic, command)
            done = await asyncio.wait_for(future, timeout=60)
            if measure:
                latencies.append(done - t0)

        async def loop(count: int, measure: bool) -> None:
            remaining = count

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await one(measure)

            await asyncio.gather(*(worker() for _ in range(bench.concurrency)))

        await loop(min(200, round_trips), measure=False)  # warm-up: connections, metadata, JIT of the broker
        started = time.perf_counter()
        await loop(round_trips, measure=True)
        wall = time.perf_counter() - started
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
    finally:
        await consumer.stop()
        await producer.stop()
    result: dict[str, Any] = {
        "round_trips": len(latencies),
        "concurrency": bench.concurrency,
        "wall_seconds": round(wall, 3),
        "round_trips_per_second": round(len(latencies) / wall, 1),
        "latency_seconds": stats.summary(latencies),
    }
    bench.log(
        f"floor: Kafka request/reply: {result['round_trips_per_second']}/s "
        f"(p50 {result['latency_seconds']['p50']}s, p99 {result['latency_seconds']['p99']}s)"
    )
    return result


# ---- 2. K sagas at concurrency C ----------------------------------------------------------------


class Watcher:
    """One watch on a namespace's Sagas: resolves a future per name when the saga reaches a terminal
    phase, and remembers when the driver saw it."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.seen_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def expect(self, name: str) -> asyncio.Future[dict[str, Any]]:
        future = self.futures.get(name)
        if future is None:
            future = self.futures[name] = asyncio.get_running_loop().create_future()
        return future

    def _offer(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if (body.get("status") or {}).get("phase") in TERMINAL:
            future = self.expect(name)
            if not future.done():
                self.seen_at[name] = time.time()
                future.set_result(body)

    async def start(self) -> None:
        _, rv = await self.kube.list_sagas(self.namespace)
        self._task = asyncio.create_task(self._run(rv))

    async def _run(self, rv: str) -> None:
        while True:
            try:
                async for kind, body in self.kube.watch_sagas(self.namespace, rv):
                    if kind == "BOOKMARK":
                        continue
                    if kind == "ERROR":
                        raise KubeError(int(body.get("code", 500)), "WATCH", self.namespace, str(body))
                    rv = body["metadata"]["resourceVersion"]
                    self._offer(body)
            except (KubeError, OSError, aiohttp.ClientError, TimeoutError):
                # Expired or dropped: list again (terminal sagas resolve from the list) and go on from there.
                items, rv = await self.kube.list_sagas(self.namespace)
                for body in items:
                    self._offer(body)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _write_summary(before: dict[str, float], after: dict[str, float], steps: int) -> dict[str, Any]:
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}

    def total(prefix: str) -> float:
        return sum(v for k, v in delta.items() if k.startswith(prefix))

    post = total(f"{PLURAL} POST main")
    patch_main = total(f"{PLURAL} PATCH main")
    patch_status = total(f"{PLURAL} PATCH status")
    events = total("events POST") + total("events PATCH")
    operator_writes = patch_main + patch_status
    return {
        "sagas_post": post,
        "sagas_patch_main": patch_main,
        "sagas_patch_status": patch_status,
        "sagas_other": total(PLURAL) - post - patch_main - patch_status,
        "events_writes": events,
        "non_2xx": {k: v for k, v in delta.items() if not k.rsplit(" ", 1)[1].startswith("2")},
        "per_step": {
            "sagas_post": round(post / steps, 3),
            "sagas_patch_main": round(patch_main / steps, 3),
            "sagas_patch_status": round(patch_status / steps, 3),
            "operator_saga_writes": round(operator_writes / steps, 3),
            "all_saga_writes": round((operator_writes + post) / steps, 3),
            "events_writes": round(events / steps, 3),
            "operator_writes_with_events": round((operator_writes + events) / steps, 3),
        },
    }


async def _settled_writes(kube: Kube, quiet_seconds: float = 2.0, limit_seconds: float = 60.0) -> dict[str, float]:
    """The write counters once they stop moving: the operator posts its Events from a queue, behind the
    status writes, so the last ones land after the last saga finished."""
    deadline = time.monotonic() + limit_seconds
    last = await kube.write_requests()
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_seconds)
        now = await kube.write_requests()
        if now == last:
            break
        last = now
    return last


async def _operator_snapshot(operator: Service) -> dict[str, Any]:
    assert operator.record is not None
    text = await asyncio.to_thread(operator._get, "/metrics") or ""  # the Service's own GET
    return {
        "cpu": procinfo.cpu_seconds(operator.record.pid) or 0.0,
        "memory": procinfo.memory_mib(operator.record.pid),
        "overhead": stats.histogram_buckets(text, "saga_operator_step_overhead_seconds"),
        "step_latency": stats.histogram_buckets(text, "saga_operator_step_latency_seconds"),
    }


async def run_sagas(bench: Bench, count: int, warmup: int = 10) -> tuple[dict[str, Any], Service]:
    """K sagas, C in flight (a closed loop: each worker creates its next saga when its last one is done).
    Returns the figures and the operator, still running (the caller cleans up with it, then stops it)."""
    namespace = bench.namespace("main")
    await bench.kube.create_namespace(namespace)
    operator = bench.operator("main")
    await bench._start(operator, "operator")
    assert operator.record is not None
    idle = procinfo.memory_mib(operator.record.pid)
    watcher = Watcher(bench.kube, namespace)
    await watcher.start()
    created: dict[str, float] = {}
    try:
        # Warm-up: topic metadata, connection pools, the first Kafka fetches; not measured.
        names = [f"warmup-{i:03d}" for i in range(min(warmup, count))]
        for name in names:
            await bench.kube.create_saga(namespace, saga_manifest(name, bench.participants))
        await asyncio.wait_for(asyncio.gather(*(watcher.expect(n) for n in names)), timeout=120)

        before_writes = await bench.kube.write_requests()
        before_op = await _operator_snapshot(operator)
        before_procs = procinfo.all_processes()
        load_before = procinfo.loadavg()
        next_index = 0
        done = 0
        last_progress = time.monotonic()

        async def worker() -> None:
            nonlocal next_index, done, last_progress
            while next_index < count:
                name = f"saga-{next_index:06d}"
                next_index += 1
                created[name] = time.time()
                await bench.kube.create_saga(namespace, saga_manifest(name, bench.participants))
                await watcher.expect(name)
                done += 1
                last_progress = time.monotonic()
                if done % max(1, count // 10) == 0:
                    bench.log(f"sagas: {done}/{count} finished")

        async def stall_guard() -> None:
            while True:
                await asyncio.sleep(5)
                if time.monotonic() - last_progress > 180:
                    raise RuntimeError(f"no saga finished for 180 s ({done}/{count}); see {operator.record}")

        async def all_workers() -> None:
            await asyncio.gather(*(worker() for _ in range(bench.concurrency)))

        profiler = bench.profiler(operator.record.pid, "main")
        started = time.time()
        guard = asyncio.create_task(stall_guard())
        workers = asyncio.create_task(all_workers())
        try:
            finished, _ = await asyncio.wait({workers, guard}, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                task.result()
        finally:
            guard.cancel()
            workers.cancel()
        ended = max(watcher.seen_at[n] for n in created)
        after_op = await _operator_snapshot(operator)
        if profiler is not None:
            await profiler.stop()
        after_procs = procinfo.all_processes()
        after_writes = await _settled_writes(bench.kube)
        load_after = procinfo.loadavg()
    finally:
        await watcher.stop()

    bodies = {name: watcher.futures[name].result() for name in created}
    phases: dict[str, int] = {}
    for body in bodies.values():
        phase = body["status"]["phase"]
        phases[phase] = phases.get(phase, 0) + 1
    wall = ended - started
    steps = STEPS * count
    e2e, queued, running, from_creation = [], [], [], []
    for name, body in bodies.items():
        status = body["status"]
        finished_at = _ts(status.get("finishedAt")) or 0.0
        started_at = _ts(status.get("startedAt")) or 0.0
        e2e.append(finished_at - created[name])
        queued.append(started_at - created[name])
        running.append(finished_at - started_at)
        from_creation.append(finished_at - (_ts(body["metadata"]["creationTimestamp"]) or 0.0))

    overhead = await _message_timings(bench, bodies, created)
    op_overhead = stats.bucket_delta(after_op["overhead"], before_op["overhead"])
    op_latency = stats.bucket_delta(after_op["step_latency"], before_op["step_latency"])
    cpu = after_op["cpu"] - before_op["cpu"]
    result: dict[str, Any] = {
        "sagas": count,
        "steps_per_saga": STEPS,
        "concurrency": bench.concurrency,
        "warmup_sagas": min(warmup, count),
        "phases": phases,
        "wall_seconds": round(wall, 3),
        "sagas_per_second": round(count / wall, 2),
        "steps_per_second": round(steps / wall, 1),
        "latency_seconds": {
            "end_to_end": stats.summary(e2e),
            "create_to_started": stats.summary(queued),
            "started_to_finished": stats.summary(running),
            "creation_timestamp_to_finished": stats.summary(from_creation, digits=3),
        },
        "overhead_seconds": overhead,
        "operator_histograms_seconds": {
            "step_overhead": {q: _round(stats.histogram_quantile(op_overhead, v)) for q, v in _QS.items()},
            "step_latency": {q: _round(stats.histogram_quantile(op_latency, v)) for q, v in _QS.items()},
        },
        "apiserver_writes": _write_summary(before_writes, after_writes, steps),
        "operator": {
            "cpu_seconds": round(cpu, 2),
            "cpu_ms_per_step": round(1000 * cpu / steps, 3),
            "cpu_utilisation": round(cpu / wall, 3),
            "rss_idle_mib": round(idle.get("VmRSS", 0.0), 1),
            "rss_mib": round(after_op["memory"].get("VmRSS", 0.0), 1),
            "peak_rss_mib": round(after_op["memory"].get("VmHWM", 0.0), 1),
        },
        "cpu_seconds_by_process": procinfo.busiest(before_procs, after_procs, bench.roles, top=12),
        "loadavg": {"before": load_before, "after": load_after},
    }
    writes = result["apiserver_writes"]
    all_writes = (
        writes["sagas_post"] + writes["sagas_patch_main"] + writes["sagas_patch_status"] + writes["events_writes"]
    )
    result["apiserver_cpu_ms_per_write"] = _per(
        role_cpu(result["cpu_seconds_by_process"], "kube-apiserver"), all_writes
    )
    bench.log(
        f"sagas: {result['sagas_per_second']} sagas/s, {result['steps_per_second']} steps/s, "
        f"e2e p50 {result['latency_seconds']['end_to_end']['p50']}s"
    )
    return result, operator


_QS = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def role_cpu(rows: list[dict[str, Any]], role: str) -> float | None:
    """CPU seconds of our process `role` in a `procinfo.busiest` table (None: not known, e.g. a remote
    API server)."""
    found = [float(r["cpu_seconds"]) for r in rows if r["role"] == role]
    return sum(found) if found else None


def _per(cpu_seconds: float | None, count: float) -> float | None:
    return None if cpu_seconds is None or count <= 0 else round(1000 * cpu_seconds / count, 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


async def _message_timings(
    bench: Bench, bodies: dict[str, dict[str, Any]], created: dict[str, float]
) -> dict[str, Any]:
    """Per step, from the messages: reply sent -> next command sent (the coordinator's overhead)."""
    by_uid = {body["metadata"]["uid"]: body for body in bodies.values()}
    messages = await read_topics(bench.endpoints.kafka_bootstrap, [*bench.command_topics(), bench.reply_topic("main")])
    commands: dict[tuple[str, str], float] = {}
    replies: dict[tuple[str, str], float] = {}
    duplicates = 0
    for message in messages:
        uid = str(message.get("sagaUid"))
        if uid not in by_uid or message.get("kind") != "action":
            continue
        key = (uid, message["step"])
        table = replies if "outcome" in message else commands
        sent = _ts(message["sentAt"]) or 0.0
        if key in table:
            duplicates += 1
            sent = min(sent, table[key])
        table[key] = sent
    dispatch, closing, first, participant = [], [], [], []
    for uid, body in by_uid.items():
        name = body["metadata"]["name"]
        for index in range(1, STEPS + 1):
            step = f"step-{index}"
            if (uid, step) in commands and (uid, step) in replies:
                participant.append(replies[(uid, step)] - commands[(uid, step)])
            if index == 1 and (uid, step) in commands:
                first.append(commands[(uid, step)] - created[name])
            if index > 1 and (uid, step) in commands and (uid, f"step-{index - 1}") in replies:
                dispatch.append(commands[(uid, step)] - replies[(uid, f"step-{index - 1}")])
        last = replies.get((uid, f"step-{STEPS}"))
        finished = _ts(body["status"].get("finishedAt"))
        if last is not None and finished is not None:
            closing.append(finished - last)
    return {
        "reply_to_next_command": stats.summary(dispatch),
        "last_reply_to_finished": stats.summary(closing),
        "create_to_first_command": stats.summary(first),
        "command_to_reply": stats.summary(participant),
        "duplicate_messages": duplicates,
    }


# ---- 3. N sagas present at start-up -------------------------------------------------------------


class CommandTracker:
    """Reads the command topics from their current end and notes, per saga uid, the first command."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.topics = topics
        self.first: dict[str, float] = {}
        self.wanted: set[str] = set()
        self.all_seen = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(t, p) for t in self.topics for p in sorted(self.consumer.partitions_for_topic(t) or [])
        ]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    body = json.loads(record.value)
                    uid = body.get("sagaUid")
                    if uid in self.wanted and uid not in self.first:
                        self.first[uid] = _ts(body.get("sentAt")) or time.time()
            if self.wanted and self.wanted <= self.first.keys():
                self.all_seen.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


_READY = re.compile(r"saga-operator ready in ([0-9.]+)s with (\d+) sagas")


async def run_scale(bench: Bench, count: int) -> tuple[dict[str, Any], Service]:
    """`count` Sagas exist before the operator starts: half Succeeded, a quarter Running (one step in
    flight: step 1, 2 or 3), a quarter Pending (never started). Then the operator starts."""
    namespace = bench.namespace("scale")
    await bench.kube.create_namespace(namespace)
    now = datetime.now(UTC)
    manifests = [saga_manifest(f"scale-{i:05d}", bench.participants, timeout_seconds=600) for i in range(count)]
    statuses = happy_path(manifests[0], now)
    kinds: dict[str, str] = {}
    unfinished: set[str] = set()
    setup_started = time.monotonic()

    async def create(index: int) -> None:
        # As a previous operator would have left them: a finished or running saga carries the finalizer
        # (added on first sight); a pending one (created while no operator ran) does not.
        slot = index % 4
        kind = "finished" if slot in (0, 1) else "running" if slot == 2 else "pending"
        manifest = manifests[index]
        if kind != "pending":
            manifest = {**manifest, "metadata": {**manifest["metadata"], "finalizers": [FINALIZER]}}
        body = await bench.kube.create_saga(namespace, manifest)
        name, uid = body["metadata"]["name"], body["metadata"]["uid"]
        kinds[name] = kind
        if kind != "finished":
            unfinished.add(uid)
        if kind == "pending":
            return
        status = statuses[-1] if kind == "finished" else statuses[(index // 4) % STEPS]  # step 1, 2 or 3 in flight
        await bench.kube.patch_status(namespace, name, json.dumps(status_patch(status, None)).encode())

    await _gather_limited(bench.concurrency, [lambda i=i: create(i) for i in range(count)])  # type: ignore[misc]
    setup_seconds = time.monotonic() - setup_started
    mix = {k: sum(1 for v in kinds.values() if v == k) for k in ("finished", "running", "pending")}
    bench.log(f"scale: {count} Sagas created in {setup_seconds:.1f}s ({mix}); starting the operator")

    tracker = CommandTracker(bench.endpoints.kafka_bootstrap, bench.command_topics())
    tracker.wanted = set(unfinished)
    await tracker.start()
    operator = bench.operator("scale")
    peak_sockets = 0
    samples: list[tuple[float, float, int]] = []  # (seconds since start, VmRSS MiB, open sockets)
    before_procs = procinfo.all_processes()
    t0 = time.time()
    operator.start(wait=False)
    assert operator.record is not None
    bench.roles[operator.record.pid] = "operator"
    pid = operator.record.pid

    async def sample_memory() -> None:
        nonlocal peak_sockets
        while True:
            rss = procinfo.memory_mib(pid).get("VmRSS", 0.0)
            sockets = procinfo.open_sockets(pid)
            samples.append((round(time.time() - t0, 2), round(rss, 1), sockets))
            peak_sockets = max(peak_sockets, sockets)
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample_memory())
    profiler = bench.profiler(pid, "scale")
    try:
        await asyncio.to_thread(operator.wait_ready, 600.0)
        ready_probe = time.time() - t0
        await asyncio.wait_for(tracker.all_seen.wait(), timeout=600)
        resumed = max(tracker.first.values()) - t0
        first_command = min(tracker.first.values()) - t0
        after_resume = procinfo.memory_mib(pid)
        deadline = time.monotonic() + 600
        while True:
            succeeded = await asyncio.to_thread(operator.metric, "saga_operator_sagas", phase="Succeeded")
            if succeeded >= count:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"scale: only {succeeded:.0f}/{count} sagas Succeeded after 600 s")
            await asyncio.sleep(0.5)
        all_done = time.time() - t0
        if profiler is not None:
            await profiler.stop()
        await asyncio.sleep(2.0)
        settled = procinfo.memory_mib(pid)
        cpu = procinfo.cpu_seconds(pid) or 0.0
        after_procs = procinfo.all_processes()
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await tracker.stop()
    log_text = await asyncio.to_thread(Path(operator.record.log).read_text, errors="replace")
    ready_lines = _READY.findall(log_text)
    result: dict[str, Any] = {
        "sagas": count,
        "mix": mix,
        "unfinished": len(unfinished),
        "setup_seconds": round(setup_seconds, 1),
        "resume_seconds": round(resumed, 3),
        "first_command_seconds": round(first_command, 3),
        "ready_probe_seconds": round(ready_probe, 3),
        "ready_log": {"seconds": float(ready_lines[-1][0]), "sagas": int(ready_lines[-1][1])} if ready_lines else None,
        "all_succeeded_seconds": round(all_done, 3),
        "operator": {
            "rss_after_resume_mib": round(after_resume.get("VmRSS", 0.0), 1),
            "rss_settled_mib": round(settled.get("VmRSS", 0.0), 1),
            "peak_rss_mib": round(settled.get("VmHWM", 0.0), 1),
            "cpu_seconds": round(cpu, 2),
            "peak_open_sockets": peak_sockets,
        },
        "timeline": {
            "columns": ["seconds", "rss_mib", "open_sockets"],
            "rows": samples[:: max(1, len(samples) // 60)],
        },
        "cpu_seconds_by_process": procinfo.busiest(before_procs, after_procs, bench.roles, top=8),
    }
    bench.log(
        f"scale: every unfinished saga resumed {resumed:.2f}s after the operator started; "
        f"peak RSS {result['operator']['peak_rss_mib']} MiB"
    )
    return result, operator
