"""Phase 1, the floor: what the operator's two dependencies can do on this machine, without the operator.

* `floor_status_patches`: the 4 status PATCHes of each saga's happy path, C objects at a time, once with
  the lean aiohttp client and once with kubernetes_asyncio (the operator's client);
* `floor_kafka`: command/reply round trips through the echo participant with the operator's producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer

from saga_harness.messages import action_command
from saga_harness.topics import partitions_of
from saga_protocol import command_topic, decode_reply
from saga_protocol import reply_topic as saga_reply_topic

from . import procinfo, stats
from .kube import KubeError, load_configuration
from .operator_internals import GROUP, PLURAL, VERSION, new_producer, send_command, status_patch
from .shared import PAYLOAD, Bench, gather_limited, happy_path, ms_per, role_cpu, saga_manifest

# as the operator's adapter passes it: custom resources take JSON merge patches
_MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


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

        await gather_limited(min(c, 50), [lambda i=i: one(i) for i in range(objects)])  # type: ignore[misc]
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
        result["apiserver_cpu_ms_per_patch"] = ms_per(
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
    kafka = bench.kafka_options()
    topic = command_topic(bench.floor_participant)
    reply_topic = saga_reply_topic(bench.floor_participant)
    producer = new_producer(bench.kafka_settings())
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False)
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
        partitions = await partitions_of(kafka, [reply_topic])
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        pumping = asyncio.create_task(pump())
        latencies: list[float] = []

        async def one(measure: bool) -> None:
            uid = str(uuid.uuid4())
            command = action_command(
                uid, "step-1", "do", PAYLOAD, reply_topic, saga_namespace="floor", saga_name="floor"
            )
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            waiting[uid] = future
            t0 = time.perf_counter()
            await send_command(producer, topic, command)
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
