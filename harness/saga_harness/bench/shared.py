"""What every phase of the benchmark shares: the run (`Bench`: endpoints, names unique to the run, its
processes), the profiler, the sagas it creates and their happy-path statuses, small helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from saga_harness import manifests
from saga_harness.messages import succeeded_reply
from saga_harness.services import Service, module_service, operator_service
from saga_protocol import REPLY_DEAD_LETTER_TOPIC, command_topic, reply_topic
from saga_testenv.kafka import TopicSpec, ensure_topics
from saga_testenv.stack import StackEndpoints

from .kube import Kube, KubeError
from .operator_internals import ReplyReceived, SagaSpec, SagaStatus, Start, transition

Log = Callable[[str], None]
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

    def reply_topics(self) -> list[str]:
        """Where the bench participants reply (the echo answers on a command's replyTopic): one per participant."""
        return [reply_topic(p) for p in self.participants]

    def namespace(self, phase: str) -> str:
        return f"saga-bench-{self.run_id}-{phase}"

    def command_topics(self) -> list[str]:
        return [command_topic(p) for p in self.participants]

    def all_topics(self) -> list[str]:
        return [
            *self.command_topics(),
            command_topic(self.floor_participant),
            *self.reply_topics(),
            reply_topic(self.floor_participant),
            REPLY_DEAD_LETTER_TOPIC,
        ]

    # ---- processes ----------------------------------------------------------------------------

    def profiler(self, pid: int, name: str) -> Profiler | None:
        return Profiler(pid, self.run_dir / f"py-spy-{name}.txt", self.log) if self.profile else None

    async def start_echo(self) -> None:
        topics = [*self.all_topics()[: STEPS + 1]]
        await ensure_topics(
            self.endpoints.kafka_bootstrap, [TopicSpec(t, partitions=self.partitions) for t in self.all_topics()]
        )
        args = [
            "--bootstrap",
            self.endpoints.kafka_bootstrap,
            "--topics",
            ",".join(topics),
            "--group",
            f"saga-bench-echo-{self.run_id}",
        ]
        self.echo = module_service("echo", "saga_harness.bench.echo", args, self.run_dir, self.endpoints.env())
        await self._start(self.echo, "echo participant")

    def operator(self, phase: str) -> Service:
        run_dir = self.run_dir / phase
        run_dir.mkdir(parents=True, exist_ok=True)
        service = operator_service(
            run_dir,
            self.endpoints.env(),
            SAGA_NAMESPACE=self.namespace(phase),
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
        await gather_limited(self.concurrency, [lambda n=n: release(n) for n in names])  # type: ignore[misc]


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
    steps = [(f"step-{index}", participant, "do", "undo") for index, participant in enumerate(participants, start=1)]
    return manifests.saga_manifest(name, PAYLOAD, steps, timeout_seconds=timeout_seconds)


def happy_path(manifest: dict[str, Any], now: datetime) -> list[SagaStatus]:
    """The statuses the operator writes for this saga on the happy path, from the pure core itself:
    step 1 dispatched, step 2 dispatched, step 3 dispatched, Succeeded."""
    spec = SagaSpec.model_validate(manifest["spec"])
    status, _ = transition(spec, SagaStatus(), Start(now), uid="0")
    out = [status]
    for step in spec.steps:
        reply = succeeded_reply("0", step.name, step.participant, sent_at=now)
        status, _ = transition(spec, status, ReplyReceived(reply, now), uid="0")
        out.append(status)
    for written in out:
        written.observed_generation = 1
    return out


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


async def gather_limited(concurrency: int, jobs: Iterable[Callable[[], Awaitable[None]]]) -> None:
    queue = list(jobs)
    queue.reverse()

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def role_cpu(rows: list[dict[str, Any]], role: str) -> float | None:
    """CPU seconds of our process `role` in a `procinfo.busiest` table (None: not known, e.g. a remote
    API server)."""
    found = [float(r["cpu_seconds"]) for r in rows if r["role"] == role]
    return sum(found) if found else None


def ms_per(cpu_seconds: float | None, count: float) -> float | None:
    return None if cpu_seconds is None or count <= 0 else round(1000 * cpu_seconds / count, 3)
