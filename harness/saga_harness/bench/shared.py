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

from saga_harness import kafka_access, manifests
from saga_harness import topics as read_back
from saga_harness.messages import succeeded_reply
from saga_harness.services import Service, module_service, operator_service
from saga_plumbing import KafkaSettings
from saga_protocol import REPLY_DEAD_LETTER_TOPIC, command_topic, reply_topic
from saga_testenv import Acl
from saga_testenv.kafka import TopicSpec
from saga_testenv.stack import StackEndpoints

from .kube import Kube, KubeError
from .operator_internals import ReplyReceived, SagaSpec, SagaStatus, Start, transition

Log = Callable[[str], None]
STEPS = 3
#: The echo participant's principal (it answers for every participant of the run).
ECHO_PRINCIPAL = "saga-bench-echo"
#: The saga phases: "main" with the run's first Kafka mode, "plain" the other one under --kafka-security both;
#: the other variants' phases are named after them (`Variant.phase`).
SAGA_PHASES = ("main", "plain")
#: The folders of a source tree that hold the operator's packages (pyproject's `packages.find`).
SOURCE_DIRS = ("operator", "protocol")


@dataclass(frozen=True)
class Variant:
    """How the operator of one saga phase runs: how many replicas, which status-write mode (empty: its
    default), and from which source tree (None: this one; else an older commit, unpacked, `commit` naming it)."""

    replicas: int = 1
    status_writes: str = ""
    source: Path | None = None
    commit: str = ""

    @property
    def label(self) -> str:
        parts = [f"{self.commit[:10]} (old)" if self.commit else "this tree"]
        parts.append(f"{self.replicas} replica" + ("s" if self.replicas > 1 else ""))
        if self.status_writes:
            parts.append(self.status_writes)
        return ", ".join(parts)

    @property
    def phase(self) -> str:
        """A name for the phase's namespace and consumer group (a DNS label part)."""
        writes = f"-{self.status_writes}" if self.status_writes else ""
        origin = f"old{self.commit[:7]}-" if self.commit else ""
        return f"{origin}r{self.replicas}{writes}"


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
    #: The processes and the driver connect over SASL_SSL, each as its own principal (else: the broker's
    #: plaintext listener, no authentication: the baseline --kafka-security off measures against).
    secured: bool = True
    _provisioned: bool = False

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(f"bench-{self.run_id}-p{i}" for i in range(1, STEPS + 1))

    @property
    def floor_participant(self) -> str:
        return f"bench-{self.run_id}-floor"

    def reply_topics(self) -> list[str]:
        """Where the bench participants reply (the echo answers on a command's replyTopic): one per participant
        and the floor's. Every phase's operator reads them (each as its own group)."""
        return [reply_topic(p) for p in (*self.participants, self.floor_participant)]

    @property
    def reply_dead_letter_topic(self) -> str:
        """The run's own dead-letter topic of replies (deleted with the run's topics)."""
        return f"{REPLY_DEAD_LETTER_TOPIC}.bench-{self.run_id}"

    def namespace(self, phase: str) -> str:
        return f"saga-bench-{self.run_id}-{phase}"

    def command_topics(self) -> list[str]:
        return [command_topic(p) for p in self.participants]

    def all_topics(self) -> list[str]:
        return [*self.command_topics(), command_topic(self.floor_participant), *self.reply_topics()]

    # ---- Kafka: who connects how --------------------------------------------------------------

    def plaintext_bootstrap(self) -> str | None:
        """The broker's listener without authentication, if it has one."""
        if not kafka_access.secured(self.endpoints):
            return self.endpoints.kafka_bootstrap
        return self.endpoints.kafka_plaintext_bootstrap

    def kafka_env(self, principal: str) -> dict[str, str]:
        """The environment of a process of ours that connects as ``principal`` (in the current mode)."""
        if self.secured:
            return kafka_access.service_env(self.endpoints, principal)
        plaintext = self.plaintext_bootstrap()
        assert plaintext is not None
        env = {k: v for k, v in self.endpoints.env().items() if not k.startswith("KAFKA_")}
        return {**env, "KAFKA_BOOTSTRAP_SERVERS": plaintext}

    def kafka_settings(self, principal: str = kafka_access.ADMIN) -> KafkaSettings:
        """The same as the operator's KafkaSettings, for the driver's own clients that mimic it."""
        env = self.kafka_env(principal)
        fields: dict[str, Any] = {k.removeprefix("KAFKA_").lower(): v for k, v in env.items() if k.startswith("KAFKA_")}
        return KafkaSettings.model_validate(fields)

    def kafka_options(self) -> dict[str, Any]:
        """aiokafka settings of the driver's own readers: the admin, or the plaintext listener."""
        if self.secured:
            return kafka_access.client_options(self.endpoints, kafka_access.ADMIN)
        return {"bootstrap_servers": self.plaintext_bootstrap()}

    def provision(self) -> None:
        """The ACL table for the run's principals (the operator, the echo), as the admin; topics are made by
        ``start_echo``. Once per run; nothing on a broker whose security is not known."""
        if self._provisioned:
            return
        self._provisioned = True
        dead_letters = [self.reply_dead_letter_topic]
        echo_reads = [*self.command_topics(), command_topic(self.floor_participant)]
        kafka_access.provision(
            self.endpoints,
            {
                kafka_access.OPERATOR: kafka_access.operator_acls(
                    group=f"saga-bench-{self.run_id}", group_prefixed=True, reply_dead_letter_topics=dead_letters
                ),
                ECHO_PRINCIPAL: [
                    *(Acl.topic(t, "Read") for t in echo_reads),
                    Acl.group(f"saga-bench-echo-{self.run_id}", "Read", prefixed=True),
                    *(Acl.topic(t, "Write") for t in self.reply_topics()),
                ],
            },
        )

    # ---- processes ----------------------------------------------------------------------------

    def profiler(self, pid: int, name: str) -> Profiler | None:
        return Profiler(pid, self.run_dir / f"py-spy-{name}.txt", self.log) if self.profile else None

    async def start_echo(self) -> None:
        """The echo participant in the current mode (the topics and ACLs first, by the admin)."""
        await asyncio.to_thread(self.provision)
        topics = [*self.all_topics()[: STEPS + 1]]
        specs = [TopicSpec(t, partitions=self.partitions) for t in self.all_topics()]
        specs += [TopicSpec(self.reply_dead_letter_topic, partitions=1)]
        await kafka_access.create_topics(self.endpoints, specs)
        mode = "secured" if self.secured else "plain"
        args = ["--topics", ",".join(topics), "--group", f"saga-bench-echo-{self.run_id}-{mode}"]
        env = self.kafka_env(ECHO_PRINCIPAL)
        self.echo = module_service(f"echo-{mode}", "saga_harness.bench.echo", args, self.run_dir, env)
        await self._start(self.echo, "echo participant")

    def operators(self, phase: str, variant: Variant | None = None) -> list[Service]:
        """The operator replicas of a saga phase: one consumer group and one namespace, each with its own port
        and log directory (``<run>/<phase>/replica-<i>``), configured as ``variant`` says."""
        variant = variant or Variant()
        services = []
        for index in range(variant.replicas):
            run_dir = self.run_dir / phase / f"replica-{index + 1}"
            run_dir.mkdir(parents=True, exist_ok=True)
            service = operator_service(
                run_dir,
                self.kafka_env(kafka_access.OPERATOR),
                SAGA_CREATE_TOPICS="false",
                SAGA_REPLY_DEAD_LETTER_TOPIC=self.reply_dead_letter_topic,
                SAGA_NAMESPACE=self.namespace(phase),
                SAGA_CONSUMER_GROUP=self.consumer_group(phase),
                SAGA_PARTICIPANTS=",".join(self.participants),
                SAGA_TOPIC_PARTITIONS=str(self.partitions),
                # The variant's status-write mode, else the run's environment's (empty: the operator's default).
                SAGA_STATUS_WRITES=variant.status_writes or os.environ.get("SAGA_STATUS_WRITES", ""),
                SAGA_STATUS_COALESCE_MS=os.environ.get("SAGA_STATUS_COALESCE_MS", ""),
            )
            if variant.source is not None:
                # An older commit's operator: its own packages first on the path, the same interpreter and
                # dependencies (the editable installs of this tree come after PYTHONPATH).
                service.env["PYTHONPATH"] = os.pathsep.join(str(variant.source / d) for d in SOURCE_DIRS)
            service.name = f"operator-{index + 1}" if variant.replicas > 1 else "operator"
            # For A/B experiments (an operator with a change, or under a profiler): the command to run instead.
            override = os.environ.get("SAGA_BENCH_OPERATOR_COMMAND")
            if override:
                service.argv = shlex.split(override)
            services.append(service)
        return services

    def operator(self, phase: str) -> Service:
        """The one operator of a phase (the floor and the scale phase)."""
        (service,) = self.operators(phase)
        return service

    def consumer_group(self, phase: str) -> str:
        return f"saga-bench-{self.run_id}-{phase}"

    async def fresh_group(self, phase: str) -> None:
        """The phase's consumer group starts at the reply topics' ends: every phase (and the floor) replies on the
        same topics, and an operator would set each earlier phase's reply aside as UnknownSaga, work its own
        figures would be charged for."""
        await read_back.start_group_at_end(self.kafka_options(), self.consumer_group(phase), self.reply_topics())

    async def _start(self, service: Service, role: str) -> None:
        service.start(wait=False)
        assert service.record is not None
        self.roles[service.record.pid] = role
        await asyncio.to_thread(service.wait_ready, 120.0)

    async def stop(self, service: Service | None) -> None:
        if service is not None:
            await asyncio.to_thread(service.stop)

    async def stop_all(self, services: Iterable[Service]) -> None:
        for service in services:
            await self.stop(service)

    async def delete_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**kafka_access.client_options(self.endpoints, kafka_access.ADMIN))
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
