"""Phase 3: N Sagas present when the operator starts (finished, running, pending): its memory, and the time
until every unfinished one is resumed (the first command of each, read off the command topics)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from saga_harness.services import Service
from saga_harness.topics import partitions_of

from . import procinfo
from .operator_internals import FINALIZER, status_patch
from .shared import STEPS, Bench, gather_limited, happy_path, saga_manifest, ts


class CommandTracker:
    """Reads the command topics from their current end and notes, per saga uid, the first command."""

    def __init__(self, kafka: dict[str, Any], topics: list[str]) -> None:
        self.kafka = kafka
        self.consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False)
        self.topics = topics
        self.first: dict[str, float] = {}
        self.wanted: set[str] = set()
        self.all_seen = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        partitions = await partitions_of(self.kafka, self.topics)
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
                        self.first[uid] = ts(body.get("sentAt")) or time.time()
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

    await gather_limited(bench.concurrency, [lambda i=i: create(i) for i in range(count)])  # type: ignore[misc]
    setup_seconds = time.monotonic() - setup_started
    mix = {k: sum(1 for v in kinds.values() if v == k) for k in ("finished", "running", "pending")}
    bench.log(f"scale: {count} Sagas created in {setup_seconds:.1f}s ({mix}); starting the operator")

    tracker = CommandTracker(bench.kafka_options(), bench.command_topics())
    tracker.wanted = set(unfinished)
    await tracker.start()
    operator = bench.operator("scale")
    await bench.fresh_group("scale")
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
