"""Phase 2: K sagas of 3 steps through the real operator, C in flight (a closed loop).

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
import time
from typing import Any

import aiohttp

from saga_harness.services import Service
from saga_harness.topics import read_records
from saga_harness.world import TERMINAL

from . import procinfo, stats
from .kube import Kube, KubeError
from .operator_internals import PLURAL
from .shared import STEPS, Bench, Variant, ms_per, role_cpu, saga_manifest, ts


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
        "steps_applied": stats.counter_total(text, "saga_operator_step_outcomes_total"),
    }


async def _wait_for_shards(bench: Bench, operators: list[Service]) -> None:
    """With several replicas: wait until the group has settled, every shard owned and each replica owning some
    (when there are shards enough), so that the measured sagas do not wait on the first rebalance."""
    if len(operators) < 2:
        return
    limit = 120.0
    deadline = time.monotonic() + limit
    while True:
        owned = [await asyncio.to_thread(o.metric, "saga_operator_shards_owned") for o in operators]
        if sum(owned) == bench.partitions and (len(operators) > bench.partitions or all(owned)):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replicas' shards did not settle in {limit:.0f}s: {owned}")
        await asyncio.sleep(0.5)


def _summed(snapshots: list[dict[str, Any]], key: str) -> dict[float, float]:
    total: dict[float, float] = {}
    for snapshot in snapshots:
        for bound, count in snapshot[key].items():
            total[bound] = total.get(bound, 0.0) + count
    return total


async def run_sagas(
    bench: Bench, count: int, warmup: int = 10, phase: str = "main", variant: Variant | None = None
) -> tuple[dict[str, Any], list[Service]]:
    """K sagas, C in flight (a closed loop: each worker creates its next saga when its last one is done),
    in the Kafka mode of ``bench.secured``, by the replicas ``variant`` says (one by default). Returns the
    figures and the operators, still running (the caller cleans up with them, then stops them)."""
    variant = variant or Variant()
    namespace = bench.namespace(phase)
    await bench.kube.create_namespace(namespace)
    operators = bench.operators(phase, variant)
    await bench.fresh_group(phase)
    for replica in operators:
        await bench._start(replica, replica.name)
    await _wait_for_shards(bench, operators)
    idle = [procinfo.memory_mib(o.record.pid) for o in operators if o.record is not None]
    watcher = Watcher(bench.kube, namespace)
    await watcher.start()
    created: dict[str, float] = {}
    try:
        # Warm-up: topic metadata, connection pools, the first Kafka fetches; not measured.
        names = [f"warmup-{i:03d}" for i in range(min(warmup, count))]
        for name in names:
            await bench.kube.create_saga(namespace, saga_manifest(name, bench.participants))
        await asyncio.wait_for(asyncio.gather(*(watcher.expect(n) for n in names)), timeout=120)

        # settled: the warm-up's last Events (posted from a queue, behind its status writes) are not counted
        before_writes = await _settled_writes(bench.kube)
        before_ops = [await _operator_snapshot(o) for o in operators]
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
                    logs = ", ".join(str(o.run_dir) for o in operators)
                    raise RuntimeError(f"no saga finished for 180 s ({done}/{count}); see the logs in {logs}")

        async def all_workers() -> None:
            await asyncio.gather(*(worker() for _ in range(bench.concurrency)))

        first = operators[0].record
        assert first is not None
        profiler = bench.profiler(first.pid, phase)  # the first replica
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
        after_ops = [await _operator_snapshot(o) for o in operators]
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
        ended_in = body["status"]["phase"]
        phases[ended_in] = phases.get(ended_in, 0) + 1
    wall = ended - started
    steps = STEPS * count
    e2e, queued, running, from_creation = [], [], [], []
    for name, body in bodies.items():
        status = body["status"]
        finished_at = ts(status.get("finishedAt")) or 0.0
        started_at = ts(status.get("startedAt")) or 0.0
        e2e.append(finished_at - created[name])
        queued.append(started_at - created[name])
        running.append(finished_at - started_at)
        from_creation.append(finished_at - (ts(body["metadata"]["creationTimestamp"]) or 0.0))

    overhead = await _message_timings(bench, bodies, created, phase)
    op_overhead = stats.bucket_delta(_summed(after_ops, "overhead"), _summed(before_ops, "overhead"))
    op_latency = stats.bucket_delta(_summed(after_ops, "step_latency"), _summed(before_ops, "step_latency"))
    replicas = [
        _replica_figures(o.name, b, a, i) for o, b, a, i in zip(operators, before_ops, after_ops, idle, strict=True)
    ]
    cpu = sum(r["cpu_seconds"] for r in replicas)
    result: dict[str, Any] = {
        "sagas": count,
        "kafka_security": "SASL_SSL (SCRAM-SHA-512)" if bench.secured else "PLAINTEXT",
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
            "replicas": len(operators),
            "source": variant.commit or "this tree",
            "status_writes": variant.status_writes or "default",
            "cpu_seconds": round(cpu, 2),
            "cpu_ms_per_step": round(1000 * cpu / steps, 3),
            "cpu_utilisation": round(cpu / wall, 3),
            "rss_idle_mib": max(r["rss_idle_mib"] for r in replicas),
            "rss_mib": max(r["rss_mib"] for r in replicas),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in replicas),
            "by_replica": replicas,
        },
        "cpu_seconds_by_process": procinfo.busiest(before_procs, after_procs, bench.roles, top=12),
        "loadavg": {"before": load_before, "after": load_after},
    }
    writes = result["apiserver_writes"]
    all_writes = (
        writes["sagas_post"] + writes["sagas_patch_main"] + writes["sagas_patch_status"] + writes["events_writes"]
    )
    result["apiserver_cpu_ms_per_write"] = ms_per(
        role_cpu(result["cpu_seconds_by_process"], "kube-apiserver"), all_writes
    )
    bench.log(
        f"sagas: {result['sagas_per_second']} sagas/s, {result['steps_per_second']} steps/s, "
        f"e2e p50 {result['latency_seconds']['end_to_end']['p50']}s"
    )
    return result, operators


def _replica_figures(
    name: str, before: dict[str, Any], after: dict[str, Any], idle: dict[str, float]
) -> dict[str, Any]:
    """One replica's CPU over the measured part and the steps it applied (its own counter), so that a
    replica's CPU per step is known however the shards fell."""
    cpu = after["cpu"] - before["cpu"]
    applied = after["steps_applied"] - before["steps_applied"]
    return {
        "name": name,
        "cpu_seconds": round(cpu, 2),
        "steps_applied": int(applied),
        "cpu_ms_per_step_applied": round(1000 * cpu / applied, 3) if applied else None,
        "rss_idle_mib": round(idle.get("VmRSS", 0.0), 1),
        "rss_mib": round(after["memory"].get("VmRSS", 0.0), 1),
        "peak_rss_mib": round(after["memory"].get("VmHWM", 0.0), 1),
    }


_QS = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


async def _message_timings(
    bench: Bench, bodies: dict[str, dict[str, Any]], created: dict[str, float], phase: str
) -> dict[str, Any]:
    """Per step, from the messages: reply sent -> next command sent (the coordinator's overhead)."""
    by_uid = {body["metadata"]["uid"]: body for body in bodies.values()}
    topics = [*bench.command_topics(), *bench.reply_topics()]
    records = await read_records(bench.kafka_options(), topics, patience=None)
    messages = [json.loads(record.value) for record in records]
    commands: dict[tuple[str, str], float] = {}
    replies: dict[tuple[str, str], float] = {}
    duplicates = 0
    for message in messages:
        uid = str(message.get("sagaUid"))
        if uid not in by_uid or message.get("kind") != "action":
            continue
        key = (uid, message["step"])
        table = replies if "outcome" in message else commands
        sent = ts(message["sentAt"]) or 0.0
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
        finished = ts(body["status"].get("finishedAt"))
        if last is not None and finished is not None:
            closing.append(finished - last)
    return {
        "reply_to_next_command": stats.summary(dispatch),
        "last_reply_to_finished": stats.summary(closing),
        "create_to_first_command": stats.summary(first),
        "command_to_reply": stats.summary(participant),
        "duplicate_messages": duplicates,
    }
