"""`make chaos`: many buy-video sagas while everything breaks, then an audit of the books.

The run, Jepsen-style: a seeded plan of N sagas (business failures, participants slower than the step
timeout, transient participant errors, aborts by `kubectl patch`) is applied to a real stack while a fault
injector

* SIGKILLs the operator every few seconds and starts it again,
* kills the Kafka broker once and restarts it (same ports, same data directory),
* freezes the API server once (SIGSTOP, then SIGCONT),
* SIGKILLs and restarts each participant once,
* re-delivers real commands and replies (copies of messages read back from the topics), and
* feeds malformed replies to the operator and malformed commands to the participants.

Then the faults stop, every saga is waited for, the topics are drained, and the books are checked:
every saga terminal; per saga the participants' rows match the outcome; money conserved; nothing
applied twice; every malformed message dead-lettered with the right reason and nothing else
dead-lettered. Each violation names its saga; the exit status is 1 if there is any (2 if the run itself
could not be carried out). See docs/chaos.md.

    python -m saga_harness.chaos [--sagas 300] [--seed N] [--stack-dir DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import heapq
import itertools
import json
import logging
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from saga_buyvideo import SCHEMAS, database_path
from saga_participants.inbox import open_database
from saga_participants.sdk import DLQ_REASON, REPLY_UNDELIVERABLE
from saga_protocol import (
    COMMAND_TYPE,
    REPLY_TYPE,
    Command,
    CommandKind,
    Outcome,
    Reply,
    command_topic,
    dead_letter_topic,
    encode_command,
    encode_reply,
    idempotency_key,
)
from saga_testenv.kafka import run_sync
from saga_testenv.stack import Stack, StackEndpoints

from .faults import StackFaults
from .services import Service
from .world import PARTICIPANTS, TERMINAL, SagaWorld, WorldError

Log = Callable[[str], None]

#: The header that marks a message the injector made up; dead-letter topics keep the original headers.
MARKER: Final = "chaos_injected"
#: The dead-letter reason header, the same on both sides (saga_operator.adapters.kafka, saga_participants.sdk).
#: A participant also dead-letters a good command whose reply it could not produce in time, REPLY_UNDELIVERABLE
#: (the broker was down): its outcome is stored, and the operator's retry gets it replayed.
DLQ_REASON_HEADER: Final = DLQ_REASON
STEPS: Final = (
    ("record-purchase", "videos", "record-purchase", "remove-purchase"),
    ("debit-buyer", "users", "debit", "refund"),
    ("credit-agent", "agents", "credit", "reverse-credit"),
)


class ChaosError(RuntimeError):
    """The run could not be carried out (a service would not come back, the stack is foreign, ...)."""


def _say(message: str) -> None:
    print(message, flush=True)


# ==== the plan ==========================================================================================


@dataclass(frozen=True)
class ChaosConfig:
    sagas: int = 300
    seed: int = 0
    #: Sagas applied per second (in `kubectl apply` batches of `batch`).
    rate: float = 4.0
    batch: int = 8
    step_timeout: int = 6
    retry_limit: int = 4
    #: The operator runs for a random while in this range (seconds) between two SIGKILLs.
    operator_kill_every: tuple[float, float] = (3.0, 8.0)
    restart_kafka: bool = True
    kill_participants: bool = True
    #: How long the API server stays frozen (0: not at all).
    apiserver_pause: float = 8.0
    #: One real command or reply copied back onto its topic every this many seconds.
    duplicate_every: float = 0.4
    #: Each kind of malformed reply and command is injected this many times.
    malformed_rounds: int = 1
    #: Faults go on for this long after the last saga was applied.
    tail: float = 20.0
    #: After the faults, how long every saga has to reach a terminal phase.
    finish_timeout: float = 900.0
    # The saga mix.
    p_poor: float = 0.08
    p_closed_agent: float = 0.07
    p_delay: float = 0.05
    p_flaky: float = 0.07
    p_abort: float = 0.10
    p_late_abort: float = 0.04

    def short(self) -> ChaosConfig:
        """The short form that runs inside `make test`."""
        return ChaosConfig(**{**asdict(self), "sagas": 40, "rate": 3.0, "tail": 15.0})


@dataclass(frozen=True)
class Accounts:
    users: dict[str, int]
    agents: dict[str, tuple[str, int]]


@dataclass
class SagaPlan:
    name: str
    buyer: str
    video: str
    price: int
    agent: str
    #: participant name -> simulate knob (saga_participants.simulate)
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Seconds after the saga was applied at which `spec.abort` is set (None: never).
    abort_after: float | None = None
    #: Set `spec.abort` as soon as this step is seen in flight (None: not so).
    abort_at_step: str | None = None
    #: Why the saga cannot succeed, whatever the faults (None: it may).
    cannot_succeed: str | None = None
    tags: list[str] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"buyer": self.buyer, "video": self.video, "price": self.price, "agent": self.agent}
        if self.knobs:
            body["simulate"] = self.knobs
        return body


def plan(config: ChaosConfig, names: Mapping[str, str]) -> tuple[Accounts, list[SagaPlan]]:
    """The accounts to seed and the sagas to run, all from the seed. `names`: service -> participant."""
    rng = random.Random(f"{config.seed}/plan")
    users = {f"buyer-{i:02d}": 0 if i < 4 else rng.choice((2_000, 5_000, 10_000, 40_000)) for i in range(24)}
    agents = {f"agent-{i}": ("open", 0) for i in range(4)}
    agents["agent-closed"] = ("closed", 0)
    poor = [u for u, balance in users.items() if balance == 0]
    rich = [u for u, balance in users.items() if balance > 0]
    open_agents = [a for a, (status, _) in agents.items() if status == "open"]
    plans = []
    for index in range(config.sagas):
        p = SagaPlan(
            name=f"chaos-{index:04d}",
            buyer=rng.choice(rich),
            video=f"video-{rng.randrange(60)}",
            price=rng.randrange(100, 2_500),
            agent=rng.choice(open_agents),
        )
        if rng.random() < config.p_poor:
            p.buyer = rng.choice(poor)
            p.cannot_succeed = "the buyer has no money (InsufficientFunds)"
            p.tags.append("poor-buyer")
        if rng.random() < config.p_closed_agent:
            p.agent = "agent-closed"
            p.cannot_succeed = p.cannot_succeed or "the agent is closed (AgentClosed)"
            p.tags.append("closed-agent")
        if rng.random() < config.p_delay:
            service = rng.choice(PARTICIPANTS)
            knob: dict[str, Any] = {
                "delaySeconds": config.step_timeout + 1.0,
                "delayAttempts": rng.choice((1, 1, 2)),
            }
            if rng.random() < 0.5:
                knob["kinds"] = ["action", "compensation"]
            p.knobs[names[service]] = knob
            p.tags.append(f"slow-{service}")
        if rng.random() < config.p_flaky:
            service = rng.choice(PARTICIPANTS)
            knob = p.knobs.setdefault(names[service], {})
            knob["errorAttempts"] = rng.choice((1, 2))
            if rng.random() < 0.5:
                knob["kinds"] = ["action", "compensation"]
            p.tags.append(f"flaky-{service}")
        if rng.random() < config.p_abort:
            p.abort_after = round(rng.uniform(0.0, 3.0 * config.step_timeout), 2)
            p.tags.append("abort")
            service = rng.choice(PARTICIPANTS)
            if rng.random() < 0.4 and names[service] not in p.knobs:
                # ... and the undo meets trouble: compensations are retried until they succeed, and the
                # success of an earlier attempt, arriving late, is the compensation's success.
                if rng.random() < 0.5:
                    p.knobs[names[service]] = {"errorAttempts": 1, "kinds": ["compensation"]}
                    p.tags.append(f"flaky-compensation-{service}")
                else:
                    slow = {"delaySeconds": config.step_timeout + 2.5, "delayAttempts": 1, "kinds": ["compensation"]}
                    p.knobs[names[service]] = slow
                    p.tags.append(f"slow-compensation-{service}")
        elif rng.random() < config.p_late_abort:
            # The credit takes a while and the abort comes while it is in flight: its compensation goes
            # first and the others wait for it (reverse order while the last step's outcome is unknown).
            p.knobs[names["agents"]] = {"delaySeconds": config.step_timeout - 1.0, "delayAttempts": 1}
            p.abort_at_step = "credit-agent"
            p.tags.append("abort-during-credit")
        plans.append(p)
    return Accounts(users, agents), plans


# ==== an isolated saga world =============================================================================


class ChaosWorld:
    """A `SagaWorld` of its own: its namespace (the operator watches only that one), its reply topic and
    consumer group, and participants with their own names (`videos-<run id>`, ...), hence their own
    command topics and consumer groups, so that nothing left over from another world reaches it."""

    def __init__(
        self,
        endpoints: StackEndpoints,
        run_dir: Path,
        *,
        namespace: str | None = None,
        operator_env: Mapping[str, str] | None = None,
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.endpoints = endpoints
        self.run_dir = run_dir
        self.world = SagaWorld(endpoints, run_dir, operator_env=operator_env)
        self.namespace = namespace or f"chaos-{self.world.run_id}"
        # The operator watches this namespace only; its start-up backoff is capped at 5 s (30 by default)
        # so that a run with many restarts spends its time on sagas, not on waiting.
        self.world.operator.env.setdefault("SAGA_MAX_BACKOFF_SECONDS", "5")
        self.world.operator.env["SAGA_NAMESPACE"] = self.namespace
        self.names = {service: f"{service}-{self.world.run_id}" for service in PARTICIPANTS}
        for service, process in self.world.participants.items():
            process.argv += ["--name", self.names[service]]
        self.world.operator.env["SAGA_PARTICIPANTS"] = ",".join(self.names.values())

    # ---- parts --------------------------------------------------------------------------------

    @property
    def operator(self) -> Service:
        return self.world.operator

    @property
    def participants(self) -> dict[str, Service]:
        """By service (videos, users, agents)."""
        return self.world.participants

    @property
    def services(self) -> list[Service]:
        return [self.operator, *self.participants.values()]

    @property
    def data_dir(self) -> Path:
        return self.world.data_dir

    @property
    def reply_topic(self) -> str:
        return self.world.reply_topic

    @property
    def operator_group(self) -> str:
        return f"saga-operator-{self.world.run_id}"

    def command_topic(self, service: str) -> str:
        return command_topic(self.names[service])

    def participant_group(self, service: str) -> str:
        return f"saga-participant-{self.names[service]}"

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self, accounts: Accounts | None = None, *, operator: bool = True) -> ChaosWorld:
        self.world.kubectl("create", "namespace", self.namespace)
        self.world.install_crd()
        self.world.seed()
        if accounts is not None:
            seed_accounts(self.data_dir, accounts)
        for service in self.participants.values():
            service.start(wait=False)
        if operator:
            self.operator.start(wait=False)
        for service in self.services:
            if service.running():
                service.wait_ready()
        return self

    def stop(self) -> None:
        self.world.stop()

    def __enter__(self) -> ChaosWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- sagas --------------------------------------------------------------------------------

    def saga(
        self,
        name: str,
        payload: Mapping[str, Any],
        *,
        timeout_seconds: int = 5,
        retry: Mapping[str, int] | None = None,
        abort: bool = False,
    ) -> dict[str, Any]:
        """The buy-video saga, addressed to this world's participants."""
        policy = dict(retry or {"limit": 3, "backoffSeconds": 1, "maxBackoffSeconds": 4})
        return {
            "apiVersion": "saga.dev/v1alpha1",
            "kind": "Saga",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "payload": dict(payload),
                "abort": abort,
                "steps": [
                    {
                        "name": step,
                        "participant": self.names[service],
                        "action": action,
                        "compensation": compensation,
                        "timeoutSeconds": timeout_seconds,
                        "retry": policy,
                    }
                    for step, service, action, compensation in STEPS
                ],
            },
        }

    def apply(self, manifests: Sequence[Mapping[str, Any]]) -> None:
        doc = {"apiVersion": "v1", "kind": "List", "items": [dict(m) for m in manifests]}
        self.world.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))

    def abort(self, name: str) -> None:
        self.world.kubectl(
            "patch", "saga", name, "-n", self.namespace, "--type", "merge", "-p", '{"spec":{"abort":true}}'
        )

    def summary(self) -> dict[str, tuple[str, str]]:
        """name -> (uid, phase), cheaply (no status bodies)."""
        return {name: (uid, phase) for name, (uid, phase, _) in self.overview().items()}

    def overview(self) -> dict[str, tuple[str, str, str]]:
        """name -> (uid, phase, the steps in flight), cheaply (no status bodies)."""
        out = self.world.kubectl(
            "get",
            "sagas",
            "-n",
            self.namespace,
            "--no-headers",
            "-o",
            "custom-columns=NAME:.metadata.name,UID:.metadata.uid,PHASE:.status.phase,STEP:.status.currentStep",
        )
        result = {}
        for line in out.splitlines():
            parts = [("" if part == "<none>" else part) for part in line.split()]
            if len(parts) == 4:
                result[parts[0]] = (parts[1], parts[2], parts[3])
        return result

    def bodies(self) -> dict[str, dict[str, Any]]:
        items = json.loads(self.world.kubectl("get", "sagas", "-n", self.namespace, "-o", "json"))["items"]
        return {item["metadata"]["name"]: item for item in items}

    def get(self, name: str) -> dict[str, Any]:
        return self.world.get(name, self.namespace)

    def wait_terminal(self, names: Iterable[str], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        return self.world.wait_terminal(names, self.namespace, timeout)


def seed_accounts(data_dir: Path, accounts: Accounts) -> None:
    """Add the run's buyers and agents next to the demo ones (the services need not be running)."""
    users = open_database(database_path(data_dir, "users"), SCHEMAS["users"])
    try:
        users.execute("BEGIN IMMEDIATE")
        users.executemany("INSERT OR REPLACE INTO accounts (user_id, balance) VALUES (?, ?)", accounts.users.items())
        users.execute("COMMIT")
    finally:
        users.close()
    agents = open_database(database_path(data_dir, "agents"), SCHEMAS["agents"])
    try:
        agents.execute("BEGIN IMMEDIATE")
        agents.executemany(
            "INSERT OR REPLACE INTO agents (agent_id, status, balance) VALUES (?, ?, ?)",
            [(agent, status, balance) for agent, (status, balance) in accounts.agents.items()],
        )
        agents.execute("COMMIT")
    finally:
        agents.close()


# ==== the books ===========================================================================================


@dataclass
class Books:
    """Everything the three participants' databases hold, read-only."""

    users: dict[str, int]
    agents: dict[str, int]
    #: service -> rows of its effect table: {key, saga, live, cents, who}
    effects: dict[str, list[dict[str, Any]]]
    #: service -> inbox rows: {key, kind, disposition, outcome, saga, deliveries}
    inbox: dict[str, list[dict[str, Any]]]

    @property
    def money(self) -> int:
        return sum(self.users.values()) + sum(self.agents.values())


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        yield conn
    finally:
        conn.close()


def read_books(data_dir: Path) -> Books:
    # key, saga, live, cents, who, when applied, when undone (ISO times from one clock: one machine)
    queries = {
        "videos": "SELECT idempotency_key, saga_uid, state = 'recorded', price, buyer, recorded_at, removed_at"
        " FROM purchases",
        "users": "SELECT idempotency_key, saga_uid, refunded_at IS NULL, amount, user_id, debited_at, refunded_at"
        " FROM debits",
        "agents": "SELECT idempotency_key, saga_uid, reversed_at IS NULL, amount, agent_id, credited_at, reversed_at"
        " FROM credits",
    }
    effects: dict[str, list[dict[str, Any]]] = {}
    inbox: dict[str, list[dict[str, Any]]] = {}
    users: dict[str, int] = {}
    agents: dict[str, int] = {}
    for service, query in queries.items():
        with _read_only(Path(database_path(data_dir, service))) as db:
            effects[service] = [
                {"key": k, "saga": s, "live": bool(live), "cents": c, "who": w, "applied": a, "undone": u}
                for k, s, live, c, w, a, u in db.execute(query)
            ]
            inbox[service] = [
                {"key": k, "kind": kind, "disposition": d, "outcome": o, "saga": s, "deliveries": n}
                for k, kind, d, o, s, n in db.execute(
                    "SELECT idempotency_key, kind, disposition, outcome, saga_uid, deliveries FROM saga_inbox"
                )
            ]
            if service == "users":
                users = dict(db.execute("SELECT user_id, balance FROM accounts"))
            elif service == "agents":
                agents = dict(db.execute("SELECT agent_id, balance FROM agents"))
    return Books(users, agents, effects, inbox)


# ==== probing services ===================================================================================


def http_status(service: Service, path: str) -> int | None:
    """The HTTP status of GET path (None: nothing answers)."""
    try:
        with urllib.request.urlopen(service.url + path, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> float:
    """Poll until `condition()`; returns the seconds it took."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - began


# ==== Kafka: reading topics back, lag, re-delivery, malformed messages ==================================


async def partitions_of(bootstrap: str, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of `topics` (which must exist), from a Metadata request."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    out = []
    for topic in described:
        if topic.get("error_code", 0) != 0:
            raise ChaosError(f"topic {topic.get('topic')} cannot be described (error {topic.get('error_code')})")
        out += [TopicPartition(topic["topic"], p["partition"]) for p in topic.get("partitions") or []]
    return sorted(out)


async def read_topic(bootstrap: str, topic: str, patience: float = 60.0) -> list[Any]:
    """Every record of `topic` from the beginning up to its end offsets now (no consumer group)."""
    tps = await partitions_of(bootstrap, [topic])
    if not tps:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + patience
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise ChaosError(f"reading {topic} back took longer than {patience:.0f}s")
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                records.extend(messages)
        return records
    finally:
        await consumer.stop()


async def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    """Records on `topics` that `group` has not committed yet (a group that never committed: all)."""
    tps = await partitions_of(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        lag = 0
        for tp in tps:
            done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0
            lag += max(0, ends[tp] - done)
        return lag
    finally:
        await admin.close()
        await consumer.stop()


def _header(record: Any, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return value if value is None else bytes(value)
    return None


class Redeliverer:
    """Reads the real commands and replies back and produces copies of some of them onto the same
    partition: the at-least-once delivery every participant and the operator must absorb."""

    def __init__(self, bootstrap: str, topics: Mapping[str, str], rng: random.Random) -> None:
        #: topic -> "commands" or "replies"
        self.topics = dict(topics)
        self.bootstrap = bootstrap
        self.rng = rng
        self.seen: dict[str, list[Any]] = defaultdict(list)
        self.copies: Counter[str] = Counter()
        self.failures = 0
        self.errors: list[str] = []

    async def run(self, stop: asyncio.Event, every: float) -> None:
        tps = await partitions_of(self.bootstrap, list(self.topics))
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", request_timeout_ms=10_000)
        await producer.start()
        reader = asyncio.create_task(self._read(tps, stop), name="redeliverer-reader")
        try:
            while not await _sleep_or_stop(stop, every):
                await self._copy_one(producer)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _read(self, tps: list[TopicPartition], stop: asyncio.Event) -> None:
        """Keep the latest messages of each topic at hand. A consumer that stops answering (it happens
        to aiokafka's after the broker came back) is replaced by a fresh one."""
        while not stop.is_set():
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
            try:
                await consumer.start()
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                while not stop.is_set():
                    batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500, max_records=500), timeout=10)
                    for messages in batch.values():
                        for record in messages:
                            if _header(record, MARKER) is None and record.value is not None:
                                pool = self.seen[record.topic]
                                pool.append(record)
                                if len(pool) > 400:
                                    del pool[: len(pool) - 400]
            except Exception as exc:
                self.errors.append(f"reader: {type(exc).__name__}: {exc}")
                await _sleep_or_stop(stop, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _copy_one(self, producer: AIOKafkaProducer) -> None:
        topics = [t for t, pool in self.seen.items() if pool]
        if not topics:
            return
        topic = self.rng.choice(topics)
        record = self.rng.choice(self.seen[topic])
        try:
            await asyncio.wait_for(
                producer.send_and_wait(
                    record.topic,
                    record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=list(record.headers or ()),  # aiokafka takes a list, a consumer gives a tuple
                ),
                timeout=15,
            )
        except Exception as exc:
            self.failures += 1  # the broker is down: this copy may or may not exist; nothing depends on it
            self.errors.append(f"copy: {type(exc).__name__}: {exc}")
            return
        self.copies[self.topics[topic]] += 1


@dataclass
class Injected:
    id: str
    topic: str
    kind: str
    #: The dead-letter reasons that are right for this message.
    expected: tuple[str, ...]
    saga: str | None = None
    acked: bool = False


def _reply(saga_uid: str, step: str, kind: CommandKind, attempt: int, participant: str) -> Reply:
    return Reply(
        message_id=str(uuid.uuid4()),
        saga_uid=saga_uid,
        step=step,
        kind=kind,
        attempt=attempt,
        idempotency_key=idempotency_key(saga_uid, step),
        participant=participant,
        outcome=Outcome.SUCCEEDED,
        result={"chaos": True},
        sent_at=datetime.now(UTC),
    )


def _command(saga_uid: str, participant: str, reply_topic: str, payload: dict[str, Any]) -> Command:
    return Command(
        message_id=str(uuid.uuid4()),
        saga_uid=saga_uid,
        saga_namespace="chaos",
        saga_name="made-up",
        step="debit-buyer",
        kind=CommandKind.ACTION,
        action="debit",
        attempt=1,
        idempotency_key=idempotency_key(saga_uid, "debit-buyer"),
        payload=payload,
        reply_topic=reply_topic,
        sent_at=datetime.now(UTC),
    )


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth):
        node = {"n": node}
    return node


Made = tuple[bytes | None, list[tuple[str, bytes | None]], tuple[str, ...]]

#: Malformed replies: kind -> expected dead-letter reasons. Those marked (saga) need a live saga.
REPLY_KINDS: Final = (
    "not-json",
    "not-an-object",
    "wrong-schema",
    "wrong-type",
    "null-type-header",
    "oversized",
    "empty",
    "nested-too-deep",
    "unknown-saga",
    "unknown-step",
    "future-attempt",
    "future-compensation",
)
COMMAND_KINDS: Final = (
    "not-json",
    "not-an-object",
    "wrong-schema",
    "wrong-type",
    "null-type-header",
    "oversized",
    "empty",
    "nested-too-deep",
)
NEEDS_SAGA: Final = frozenset({"unknown-step", "future-attempt", "future-compensation"})


def make_malformed_reply(kind: str, saga_uid: str | None, participant: str) -> Made:
    """(value, headers, expected dead-letter reasons) of one malformed reply. `saga_uid` names a saga
    the operator knows (started) for the kinds that need one."""
    uid = saga_uid if saga_uid and kind in NEEDS_SAGA else str(uuid.uuid4())
    real = _reply(uid, "debit-buyer", CommandKind.ACTION, 1, participant)
    _, body, headers = encode_reply(real)
    plain: list[tuple[str, bytes | None]] = list(headers)
    if kind == "not-json":
        return b"\xff\xfe{not json", plain, ("NotJson",)
    if kind == "not-an-object":
        return b'["a", "list"]', plain, ("NotAnObject",)
    if kind == "wrong-schema":
        return json.dumps({"hello": "saga", "attempt": "one"}).encode(), plain, ("SchemaViolation",)
    if kind == "wrong-type":
        typed = [(k, COMMAND_TYPE.encode() if k == "ce_type" else v) for k, v in plain]
        return body, typed, ("WrongType",)
    if kind == "null-type-header":
        return body, [(k, None if k == "ce_type" else v) for k, v in plain], ("WrongType",)
    if kind == "oversized":
        return b'{"pad": "' + b"x" * (300 * 1024) + b'"}', plain, ("Oversized",)
    if kind == "empty":
        return None, plain, ("EmptyMessage",)
    if kind == "nested-too-deep":
        deep = json.loads(body)
        deep["result"] = _nested(200)
        return json.dumps(deep).encode(), plain, ("SchemaViolation",)
    if kind == "unknown-saga":
        return body, plain, ("UnknownSaga",)
    if kind == "unknown-step":
        step = _reply(uid, "no-such-step", CommandKind.ACTION, 1, participant)
        return encode_reply(step)[1], plain, ("UnknownStep",)
    if kind == "future-attempt":
        future = _reply(uid, "debit-buyer", CommandKind.ACTION, 1_000_000, participant)
        return encode_reply(future)[1], plain, ("FutureAttempt",)
    if kind == "future-compensation":
        future = _reply(uid, "debit-buyer", CommandKind.COMPENSATION, 1_000_000, participant)
        return encode_reply(future)[1], plain, ("FutureAttempt", "CompensationNotSent")
    raise ValueError(f"unknown malformed reply kind {kind!r}")


def make_malformed_command(kind: str, participant: str, reply_topic: str) -> Made:
    """(value, headers, expected dead-letter reasons) of one malformed command for `participant`."""
    command = _command(str(uuid.uuid4()), participant, reply_topic, {"buyer": "nobody", "price": 1})
    _, body, headers = encode_command(command)
    plain: list[tuple[str, bytes | None]] = list(headers)
    if kind == "wrong-type":
        return body, [(k, REPLY_TYPE.encode() if k == "ce_type" else v) for k, v in plain], ("WrongType",)
    if kind == "nested-too-deep":
        deep = command.model_copy(update={"payload": _nested(200)})
        return encode_command(deep)[1], plain, ("SchemaViolation",)
    if kind in ("not-json", "not-an-object", "wrong-schema", "null-type-header", "oversized", "empty"):
        value, _, expected = make_malformed_reply(kind, None, participant)
        if kind == "null-type-header":
            return body, [(k, None if k == "ce_type" else v) for k, v in plain], expected
        return value, plain, expected
    raise ValueError(f"unknown malformed command kind {kind!r}")


class Injector:
    """Produces malformed messages, each marked with a header so that its dead letter can be found."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.sent: list[Injected] = []
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # max_request_size: room for the oversized messages (the broker takes up to 1 MiB).
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", request_timeout_ms=10_000, max_request_size=1_000_000
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()

    async def send(self, topic: str, kind: str, made: Made, saga: str | None = None) -> Injected:
        assert self._producer is not None
        value, headers, expected = made
        item = Injected(uuid.uuid4().hex, topic, kind, expected, saga)
        self.sent.append(item)
        key = (saga or item.id).encode()
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(topic, value, key=key, headers=[*headers, (MARKER, item.id.encode())]),
                timeout=15,
            )
        except Exception:
            return item  # not acknowledged (broker down): it may still arrive; then it is counted too
        item.acked = True
        return item


# ==== the storm ===========================================================================================


@dataclass
class Tally:
    """What the fault injector did."""

    operator_kills: int = 0
    participant_kills: Counter[str] = field(default_factory=Counter)
    kafka_restarts: int = 0
    kafka_down_seconds: float = 0.0
    apiserver_pauses: int = 0
    apiserver_paused_seconds: float = 0.0
    aborts_sent: int = 0
    #: Aborts not sent: the saga ended before the poller saw the step aimed at in flight, or the faults
    #: ended first.
    aborts_missed: int = 0
    applied_at: dict[str, float] = field(default_factory=dict)
    #: Things that went wrong along the way but are not violations (a kubectl call retried).
    notes: list[str] = field(default_factory=list)
    #: Things that are violations of their own (sagas that never finished, topics never drained).
    problems: list[str] = field(default_factory=list)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True if `stop` was set meanwhile (the caller should finish)."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


# Blocking calls (kubectl, readiness polls) get threads of their own: the event loop's default executor
# also resolves host names for aiokafka's (re)connections, and kubectl calls hanging on a frozen API
# server would otherwise starve it, stalling every Kafka client of the run.
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="chaos-blocking")


async def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call that starts no process (kubectl, HTTP polls) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args))


class Storm:
    def __init__(
        self,
        config: ChaosConfig,
        cw: ChaosWorld,
        plans: list[SagaPlan],
        faults: StackFaults | None,
        log: Log,
    ) -> None:
        self.config = config
        self.cw = cw
        self.plans = plans
        self.faults = faults
        self.log = log
        self.tally = Tally()
        self.bootstrap = cw.endpoints.kafka_bootstrap
        self.stop = asyncio.Event()
        self.summary: dict[str, tuple[str, str]] = {}
        self.in_flight: dict[str, str] = {}
        self.redeliverer = Redeliverer(
            self.bootstrap,
            {cw.reply_topic: "replies", **{cw.command_topic(s): "commands" for s in PARTICIPANTS}},
            random.Random(f"{config.seed}/redeliver"),
        )
        self.injector = Injector(self.bootstrap)
        self.started = time.monotonic()

    def _rng(self, what: str) -> random.Random:
        return random.Random(f"{self.config.seed}/{what}")

    @property
    def window(self) -> float:
        """Seconds of faults: the submissions and a tail."""
        return self.config.sagas / self.config.rate + self.config.tail

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # ---- the parts ----------------------------------------------------------------------------

    async def submit(self) -> None:
        manifests = {
            p.name: self.cw.saga(
                p.name,
                p.payload(),
                timeout_seconds=self.config.step_timeout,
                retry={"limit": self.config.retry_limit, "backoffSeconds": 1, "maxBackoffSeconds": 4},
            )
            for p in self.plans
        }
        names = list(manifests)
        size = max(1, self.config.batch)
        for start in range(0, len(names), size):
            due = self.started + start / self.config.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            batch = names[start : start + size]
            while True:
                try:
                    await _blocking(self.cw.apply, [manifests[n] for n in batch])
                    break
                except (WorldError, subprocess.TimeoutExpired) as exc:
                    self.tally.notes.append(f"kubectl apply retried: {str(exc).splitlines()[0][:120]}")
                    await asyncio.sleep(1.0)
            now = time.monotonic()
            for name in batch:
                self.tally.applied_at[name] = now

    async def abort_some(self) -> None:
        pending = [p for p in self.plans if p.abort_after is not None or p.abort_at_step is not None]
        while pending:
            if self.stop.is_set():
                self.tally.aborts_missed += len(pending)  # the faults ended before their moment came
                return
            due = []
            for p in [p for p in pending if p.name in self.tally.applied_at]:
                if p.abort_at_step is not None:
                    if self.summary.get(p.name, ("", ""))[1] in TERMINAL:
                        pending.remove(p)  # it ended before the step was seen in flight
                        self.tally.aborts_missed += 1
                    elif self.in_flight.get(p.name) == p.abort_at_step:
                        due.append(p)
                elif time.monotonic() >= self.tally.applied_at[p.name] + (p.abort_after or 0):
                    due.append(p)
            for p in due:
                pending.remove(p)
                try:
                    await _blocking(self.cw.abort, p.name)
                    self.tally.aborts_sent += 1
                except (WorldError, subprocess.TimeoutExpired) as exc:
                    self.tally.notes.append(f"abort of {p.name} not sent: {str(exc).splitlines()[0][:120]}")
            await asyncio.sleep(0.2)

    async def poll(self) -> None:
        last_log = 0.0
        while True:
            try:
                overview = await _blocking(self.cw.overview)
            except (WorldError, subprocess.TimeoutExpired):
                pass
            else:
                self.summary = {name: (uid, phase) for name, (uid, phase, _) in overview.items()}
                self.in_flight = {name: step for name, (_, _, step) in overview.items()}
            if time.monotonic() - last_log > 15:
                last_log = time.monotonic()
                self.log(self.progress())
            # Often enough to catch a saga in its slow credit (5 s) for the aborts aimed at it.
            await asyncio.sleep(1.5)

    def progress(self) -> str:
        phases = Counter(phase or "-" for _, phase in self.summary.values())
        terminal = sum(phases[p] for p in TERMINAL)
        t = self.tally
        return (
            f"  t={self.elapsed():6.1f}s applied {len(t.applied_at)}/{len(self.plans)}, terminal {terminal} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(phases.items()))}); operator kills {t.operator_kills}, "
            f"participant kills {sum(t.participant_kills.values())}, kafka restarts {t.kafka_restarts}, "
            f"api pauses {t.apiserver_pauses}, duplicates {sum(self.redeliverer.copies.values())}, "
            f"malformed {sum(1 for i in self.injector.sent if i.acked)}"
        )

    async def _restart(self, service: Service, down: float) -> None:
        """SIGKILL and start again. The spawn happens here, on the main thread (see faults.py)."""
        service.kill()
        await asyncio.sleep(down)
        service.start(wait=False)
        await _blocking(service.wait_ready, 300.0)

    async def kill_operator(self) -> None:
        rng = self._rng("operator")
        low, high = self.config.operator_kill_every
        while not await _sleep_or_stop(self.stop, rng.uniform(low, high)):
            await self._restart(self.cw.operator, rng.uniform(0.0, 1.0))
            self.tally.operator_kills += 1

    async def kill_participants(self) -> None:
        if not self.config.kill_participants:
            return
        rng = self._rng("participants")
        times = sorted((rng.uniform(0.1, 0.9) * self.window, s) for s in PARTICIPANTS)
        for when, service in times:
            if await _sleep_or_stop(self.stop, self.started + when - time.monotonic()):
                return
            await self._restart(self.cw.participants[service], rng.uniform(0.5, 2.0))
            self.tally.participant_kills[service] += 1

    async def break_dependencies(self) -> None:
        """The Kafka broker once, then the API server once, never both at the same time."""
        if self.faults is None:
            return
        rng = self._rng("dependencies")
        submit = self.config.sagas / self.config.rate
        if self.config.restart_kafka:
            if await _sleep_or_stop(self.stop, self.started + rng.uniform(0.3, 0.45) * submit - time.monotonic()):
                return
            began = time.monotonic()
            self.faults.stop_kafka(kill=True)
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            self.faults.start_kafka(wait=False)
            await _blocking(self.faults.wait_kafka, 180.0)
            self.tally.kafka_restarts += 1
            self.tally.kafka_down_seconds = time.monotonic() - began
        if self.config.apiserver_pause > 0:
            if await _sleep_or_stop(self.stop, self.started + rng.uniform(0.65, 0.8) * submit - time.monotonic()):
                return
            began = time.monotonic()
            self.faults.pause_apiserver()
            try:
                await asyncio.sleep(self.config.apiserver_pause)
            finally:
                self.faults.resume_apiserver()
            self.tally.apiserver_pauses += 1
            self.tally.apiserver_paused_seconds = time.monotonic() - began

    async def inject_malformed(self) -> None:
        rng = self._rng("malformed")
        await self.injector.start()
        try:
            jobs: list[tuple[float, int, str, str]] = []
            order = 0
            for _ in range(self.config.malformed_rounds):
                for kind in REPLY_KINDS:
                    jobs.append((rng.uniform(0.1, 0.9) * self.window, order, "reply", kind))
                    order += 1
                for service in PARTICIPANTS:
                    for kind in COMMAND_KINDS:
                        jobs.append((rng.uniform(0.1, 0.9) * self.window, order, service, kind))
                        order += 1
            heapq.heapify(jobs)
            while jobs:
                when, order, target, kind = heapq.heappop(jobs)
                if await _sleep_or_stop(self.stop, self.started + when - time.monotonic()):
                    return
                if target == "reply":
                    saga = None
                    if kind in NEEDS_SAGA:
                        started = sorted(uid for uid, phase in self.summary.values() if phase not in ("", "Pending"))
                        if not started:
                            heapq.heappush(jobs, (when + 2.0, order, target, kind))  # no saga started yet
                            continue
                        saga = rng.choice(started)
                    made = make_malformed_reply(kind, saga, self.cw.names["users"])
                    await self.injector.send(self.cw.reply_topic, kind, made, saga)
                else:
                    made = make_malformed_command(kind, self.cw.names[target], self.cw.reply_topic)
                    await self.injector.send(self.cw.command_topic(target), kind, made)
        finally:
            await self.injector.stop()

    # ---- the whole ----------------------------------------------------------------------------

    async def run(self) -> None:
        poller = asyncio.create_task(self.poll(), name="poll")
        redeliver = asyncio.create_task(self.redeliverer.run(self.stop, self.config.duplicate_every), name="dup")
        dependencies = asyncio.create_task(self.break_dependencies(), name="dependencies")
        faults = [
            asyncio.create_task(self.kill_operator(), name="operator"),
            asyncio.create_task(self.kill_participants(), name="participants"),
            dependencies,
            asyncio.create_task(self.inject_malformed(), name="malformed"),
        ]
        aborts = asyncio.create_task(self.abort_some(), name="aborts")
        try:
            await self.submit()
            self.log(f"  all {len(self.plans)} sagas applied after {self.elapsed():.1f}s; faults go on for a while")
            await _sleep_or_stop(self.stop, self.started + self.window - time.monotonic())
            if not dependencies.done():
                # A broker restart takes a while on a small machine: the other faults go on through it,
                # and for a little while after, rather than stopping while Kafka is still down.
                await dependencies
                await asyncio.sleep(min(self.config.tail, 10.0))
            self.stop.set()
            # Each fault finishes what it started (a service being restarted comes back up).
            for task in [*faults, redeliver]:
                await task
            await aborts
            self.log(f"  faults stopped at t={self.elapsed():.1f}s; making sure everything is up")
            await self.everything_up()
            await self.finish()
        finally:
            self.stop.set()
            poller.cancel()
            for task in [*faults, redeliver, aborts, poller]:
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def everything_up(self) -> None:
        if self.faults is not None:
            self.faults.resume_apiserver()
            if not self.faults.kafka_running():
                self.faults.start_kafka(wait=False)
                await _blocking(self.faults.wait_kafka, 180.0)
        for service in self.cw.services:
            if not service.running():
                service.start(wait=False)
        for service in self.cw.services:
            await _blocking(service.wait_ready, 300.0)

    async def finish(self) -> None:
        """Wait for every saga to end, then for every command and reply to be consumed."""
        names = {p.name for p in self.plans}
        deadline = time.monotonic() + self.config.finish_timeout
        while True:
            self.summary = await _blocking(self.cw.summary)
            open_ = sorted(n for n in names if self.summary.get(n, ("", ""))[1] not in TERMINAL)
            if not open_:
                break
            if time.monotonic() > deadline:
                self.tally.problems.append(f"{len(open_)} sagas not terminal after {self.config.finish_timeout:.0f}s")
                return
            await asyncio.sleep(2.0)
        self.log(f"  every saga terminal at t={self.elapsed():.1f}s; draining the topics")
        groups = [(self.cw.operator_group, [self.cw.reply_topic])]
        groups += [(self.cw.participant_group(s), [self.cw.command_topic(s)]) for s in PARTICIPANTS]
        deadline = time.monotonic() + 180.0
        quiet = 0
        while quiet < 2:
            lags = [await group_lag(self.bootstrap, g, t) for g, t in groups]
            quiet = quiet + 1 if not any(lags) else 0
            if time.monotonic() > deadline:
                lag = dict(zip((g for g, _ in groups), lags, strict=True))
                self.tally.problems.append(f"commands or replies never consumed (after 180 s): lag {lag}")
                return
            await asyncio.sleep(1.0)


# ==== the audit ===========================================================================================


@dataclass
class Violation:
    saga: str | None
    what: str

    def __str__(self) -> str:
        return f"{self.saga}: {self.what}" if self.saga else self.what


@dataclass
class ChaosReport:
    config: ChaosConfig
    seconds: float
    phases: dict[str, int]
    violations: list[Violation]
    figures: dict[str, Any]
    namespace: str
    run_dir: str

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> str:
        return json.dumps(
            {
                "config": asdict(self.config),
                "seconds": round(self.seconds, 1),
                "phases": self.phases,
                "violations": [str(v) for v in self.violations],
                "figures": self.figures,
                "namespace": self.namespace,
                "runDir": self.run_dir,
            },
            indent=2,
            sort_keys=True,
            default=str,
        )


def audit(
    plans: Sequence[SagaPlan],
    bodies: Mapping[str, dict[str, Any]],
    before: Books,
    after: Books,
) -> tuple[list[Violation], dict[str, Any]]:
    """The checks. Pure: the sagas as planned, as the API server has them, and the books before/after."""
    violations: list[Violation] = []
    figures: dict[str, Any] = {}
    uid_to_name = {body["metadata"]["uid"]: name for name, body in bodies.items()}
    by_saga: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for service, rows in after.effects.items():
        for row in rows:
            by_saga[row["saga"]][service].append(row)
    inbox: dict[tuple[str, str, str], dict[str, Any]] = {}
    for service, rows in after.inbox.items():
        for row in rows:
            inbox[(service, row["key"], row["kind"])] = row

    causes: Counter[str] = Counter()
    retries = 0
    for p in plans:
        body = bodies.get(p.name)
        if body is None:
            violations.append(Violation(p.name, "the Saga does not exist"))
            continue
        uid = body["metadata"]["uid"]
        label = f"{p.name} ({uid})"
        status = body.get("status") or {}
        phase = status.get("phase", "")
        steps = {s["name"]: s for s in status.get("steps") or []}
        for s in steps.values():
            retries += max(0, s.get("attempt", 0) - 1) + max(0, s.get("compensationAttempt", 0) - 1)
        causes[_cause(phase, status.get("message") or "", steps)] += 1
        held = by_saga.get(uid, {})
        if phase not in ("Succeeded", "Compensated"):
            violations.append(Violation(label, f"not finished: phase {phase or 'none'} ({status.get('message')})"))
            continue
        for service, table_rows in held.items():
            if len(table_rows) > 1:
                violations.append(Violation(label, f"{len(table_rows)} rows at {service}: applied more than once"))
        # The log agrees with itself: a terminal phase only once every step is settled that way.
        settled = {"Succeeded"} if phase == "Succeeded" else {"Compensated", "Refused", "Skipped"}
        unsettled = {name: s.get("state") for name, s in steps.items() if s.get("state") not in settled}
        if unsettled or len(steps) != len(STEPS):
            violations.append(Violation(label, f"phase {phase} but steps {unsettled or 'missing'}"))
        if phase == "Succeeded":
            if p.cannot_succeed:
                violations.append(Violation(label, f"Succeeded although {p.cannot_succeed}"))
            expect = {"videos": p.buyer, "users": p.buyer, "agents": p.agent}
            for service in PARTICIPANTS:
                live = [r for r in held.get(service, []) if r["live"]]
                if len(live) != 1:
                    violations.append(Violation(label, f"Succeeded but {len(live)} live effect(s) at {service}"))
                    continue
                if live[0]["cents"] != p.price or live[0]["who"] != expect[service]:
                    violations.append(
                        Violation(
                            label,
                            f"{service} recorded {live[0]['cents']} for {live[0]['who']}, "
                            f"the saga says {p.price} for {expect[service]}",
                        )
                    )
        else:
            for service in PARTICIPANTS:
                live = [r for r in held.get(service, []) if r["live"]]
                if live:
                    violations.append(Violation(label, f"Compensated but the effect at {service} is still live"))
        # Order, as the participants saw it: each action applied after the one before it, each
        # compensation after the one after it (a step is undone only once its dependents are).
        at = {service: rows_[0] for service, rows_ in held.items() if len(rows_) == 1}
        for (_, first, _, _), (_, second, _, _) in itertools.pairwise(STEPS):
            a, b = at.get(first), at.get(second)
            if a is None or b is None:
                continue
            if _time(a["applied"]) > _time(b["applied"]):
                violations.append(Violation(label, f"{second} applied before {first}: actions out of order"))
            if a["undone"] and b["undone"] and _time(a["undone"]) < _time(b["undone"]):
                violations.append(Violation(label, f"{first} undone before {second}: compensations out of order"))
        for step, service, _, _ in STEPS:
            state = (steps.get(step) or {}).get("state", "")
            key = idempotency_key(uid, step)
            has_rows = bool(held.get(service))
            if state == "Skipped" and (has_rows or (service, key, "action") in inbox):
                violations.append(Violation(label, f"step {step} was never sent, yet {service} has a record of it"))
            if state == "Refused" and has_rows:
                violations.append(Violation(label, f"step {step} failed (nothing applied), yet {service} has a row"))

    # The participants' own bookkeeping: an effect row exactly when the inbox says the action applied,
    # live exactly when no compensation undid it.
    for service, rows in after.effects.items():
        for row in rows:
            who = uid_to_name.get(row["saga"])
            label = f"{who} ({row['saga']})" if who else f"unknown saga {row['saga']}"
            if who is None:
                violations.append(Violation(label, f"{service} holds an effect of a saga that is not in this run"))
            action = inbox.get((service, row["key"], "action"))
            undo = inbox.get((service, row["key"], "compensation"))
            if action is None or action["disposition"] != "applied":
                violations.append(Violation(label, f"{service} has an effect without an applied action in its inbox"))
            undone = undo is not None and undo["disposition"] == "applied"
            if row["live"] == undone:
                violations.append(Violation(label, f"{service}: effect live={row['live']} but compensation {undo}"))
            if undo is not None and undo["disposition"] == "tombstone":
                violations.append(Violation(label, f"{service}: a tombstone and an applied action for one key"))

    # Money: conserved in total, and each account moved by exactly its live debits and credits.
    if after.money != before.money:
        violations.append(Violation(None, f"money not conserved: {before.money} cents before, {after.money} after"))
    debited: Counter[str] = Counter()
    for row in after.effects["users"]:
        if row["live"]:
            debited[row["who"]] += row["cents"]
    credited: Counter[str] = Counter()
    for row in after.effects["agents"]:
        if row["live"]:
            credited[row["who"]] += row["cents"]
    for user, balance in after.users.items():
        expected = before.users.get(user, 0) - debited[user]
        if balance != expected:
            violations.append(Violation(None, f"user {user}: balance {balance}, expected {expected}"))
    for agent, balance in after.agents.items():
        expected = before.agents.get(agent, 0) + credited[agent]
        if balance != expected:
            violations.append(Violation(None, f"agent {agent}: balance {balance}, expected {expected}"))

    figures["outcomes"] = dict(causes)
    figures["retries"] = retries
    figures["duplicatesAbsorbedByParticipants"] = sum(
        max(0, row["deliveries"] - 1) for rows in after.inbox.values() for row in rows
    )
    figures["tombstones"] = sum(1 for rows in after.inbox.values() for row in rows if row["disposition"] == "tombstone")
    figures["lateActionsRefused"] = sum(
        1 for rows in after.inbox.values() for row in rows if row["disposition"] == "refused"
    )
    figures["moneyBefore"] = before.money
    figures["moneyAfter"] = after.money
    return violations, figures


def _time(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _cause(phase: str, message: str, steps: Mapping[str, Mapping[str, Any]]) -> str:
    """Why a saga ended as it did, from its status (the operator's own words)."""
    if phase != "Compensated":
        return phase or "none"
    if message.startswith("AbortRequested"):
        return "Compensated: aborted"
    if " gave up after " in message:
        return "Compensated: retries used up"
    failed = [s for s in steps.values() if s.get("state") == "Refused" and s.get("error")]
    if failed:
        return f"Compensated: {failed[0]['error']['reason']}"
    return "Compensated"


def audit_dead_letters(
    injected: Sequence[Injected], dead: Mapping[str, Sequence[Any]], uid_to_name: Mapping[str, str]
) -> tuple[list[Violation], dict[str, Any]]:
    """Every malformed message acknowledged by the broker is in its dead-letter topic with a right reason;
    nothing else is, but for participants' undeliverable replies (a broker outage, not a malformation)."""
    violations: list[Violation] = []
    by_id = {i.id: i for i in injected}
    found: dict[str, set[str]] = defaultdict(set)
    undeliverable = 0
    for topic, records in dead.items():
        for record in records:
            marker = _header(record, MARKER)
            reason_raw = _header(record, DLQ_REASON_HEADER) or b""
            reason = reason_raw.decode(errors="replace")
            if marker is None:
                if reason == REPLY_UNDELIVERABLE:
                    undeliverable += 1
                    continue
                saga = uid_to_name.get((record.key or b"").decode(errors="replace"))
                violations.append(Violation(saga, f"a real message was dead-lettered to {topic}: {reason}"))
                continue
            item = by_id.get(marker.decode(errors="replace"))
            if item is None:
                violations.append(Violation(None, f"{topic} holds an injected message of another run"))
                continue
            found[item.id].add(reason)
            if dead_letter_topic(item.topic) != topic:
                violations.append(Violation(None, f"malformed {item.kind} for {item.topic} ended up in {topic}"))
            if reason not in item.expected:
                violations.append(
                    Violation(
                        uid_to_name.get(item.saga or ""),
                        f"malformed {item.kind} on {item.topic} dead-lettered "
                        f"as {reason}, expected {' or '.join(item.expected)}",
                    )
                )
    for item in injected:
        if item.acked and item.id not in found:
            violations.append(Violation(None, f"malformed {item.kind} on {item.topic} was never dead-lettered"))
    replies = [i for i in injected if i.acked and not i.topic.startswith("saga.commands.")]
    commands = [i for i in injected if i.acked and i.topic.startswith("saga.commands.")]
    figures = {
        "malformedRepliesInjected": len(replies),
        "malformedRepliesDeadLettered": sum(1 for i in replies if i.id in found),
        "malformedCommandsInjected": len(commands),
        "malformedCommandsDeadLettered": sum(1 for i in commands if i.id in found),
        "malformedUnacknowledged": sum(1 for i in injected if not i.acked),
        "repliesUndeliverableDeadLettered": undeliverable,
    }
    return violations, figures


# ==== running it ==========================================================================================


def run_chaos(
    config: ChaosConfig,
    endpoints: StackEndpoints,
    run_dir: Path,
    *,
    log: Log = _say,
    operator_env: Mapping[str, str] | None = None,
) -> ChaosReport:
    """The whole run on a stack. Kafka restarts and API server pauses need a stack started here
    (`Stack`); on a foreign cluster those two faults are left out."""
    began = time.monotonic()
    faults = StackFaults(endpoints) if isinstance(endpoints, Stack) else None
    if faults is None and (config.restart_kafka or config.apiserver_pause):
        log("  (a foreign stack: the Kafka restart and the API server pause are left out)")
    cw = ChaosWorld(endpoints, run_dir / "world", operator_env=operator_env)
    accounts, plans = plan(config, cw.names)
    log(f"== chaos: {config.sagas} sagas, seed {config.seed}, namespace {cw.namespace}, run dir {run_dir}")
    cw.start(accounts)
    try:
        before = read_books(cw.data_dir)
        storm = Storm(config, cw, plans, faults, log)
        asyncio.run(storm.run())
        bodies = cw.bodies()
        after = read_books(cw.data_dir)
        violations, figures = audit(plans, bodies, before, after)
        uid_to_name = {b["metadata"]["uid"]: n for n, b in bodies.items()}
        dlq_topics = [
            dead_letter_topic(cw.reply_topic),
            *(dead_letter_topic(cw.command_topic(s)) for s in PARTICIPANTS),
        ]
        dead = {t: run_sync(read_topic(endpoints.kafka_bootstrap, t)) for t in dlq_topics}
        dlq_violations, dlq_figures = audit_dead_letters(storm.injector.sent, dead, uid_to_name)
        violations += dlq_violations
        violations += [Violation(None, problem) for problem in storm.tally.problems]
        t = storm.tally
        figures.update(dlq_figures)
        figures.update(
            {
                "operatorKills": t.operator_kills,
                "operatorStarts": cw.operator.starts,
                "participantKills": dict(t.participant_kills),
                "kafkaRestarts": t.kafka_restarts,
                "kafkaDownSeconds": round(t.kafka_down_seconds, 1),
                "apiserverPauses": t.apiserver_pauses,
                "apiserverPausedSeconds": round(t.apiserver_paused_seconds, 1),
                "duplicatesInjected": dict(storm.redeliverer.copies),
                "duplicateErrors": storm.redeliverer.errors[-20:],
                "abortsSent": t.aborts_sent,
                "abortsMissed": t.aborts_missed,
                "notes": t.notes,
                "tags": dict(Counter(tag for p in plans for tag in p.tags)),
            }
        )
        phases = dict(Counter((b.get("status") or {}).get("phase", "") for b in bodies.values()))
        report = ChaosReport(config, time.monotonic() - began, phases, violations, figures, cw.namespace, str(run_dir))
        (run_dir / "report.json").write_text(report.to_json() + "\n")
        return report
    finally:
        cw.stop()


def format_report(report: ChaosReport) -> str:
    f = report.figures
    c = report.config
    phases = ", ".join(f"{k} {v}" for k, v in sorted(report.phases.items()))
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(f["outcomes"].items(), key=lambda kv: -kv[1]))
    kills = ", ".join(f"{k} {v}" for k, v in sorted(f["participantKills"].items())) or "none"
    dups = f["duplicatesInjected"]
    lines = [
        "",
        f"== chaos run: {c.sagas} sagas, seed {c.seed}: {report.seconds:.0f} s",
        f"  sagas       {sum(report.phases.values())}: {phases}",
        f"  mix         {', '.join(f'{k} {v}' for k, v in sorted(f['tags'].items()))}; aborts sent {f['abortsSent']} "
        f"(missed their moment {f['abortsMissed']})",
        f"  outcomes    {outcomes}; commands sent again (retries) {f['retries']}",
        f"  faults      operator SIGKILLed {f['operatorKills']} times (started {f['operatorStarts']} times); "
        f"participants SIGKILLed and restarted: {kills}",
        f"              Kafka broker killed and restarted {f['kafkaRestarts']} (down {f['kafkaDownSeconds']} s); "
        f"API server frozen {f['apiserverPauses']} ({f['apiserverPausedSeconds']} s)",
        f"  duplicates  re-delivered: commands {dups.get('commands', 0)}, replies {dups.get('replies', 0)}; "
        f"participants absorbed {f['duplicatesAbsorbedByParticipants']} duplicate deliveries; "
        f"tombstones {f['tombstones']}, late actions refused {f['lateActionsRefused']}",
        f"  malformed   replies {f['malformedRepliesInjected']} injected, {f['malformedRepliesDeadLettered']} "
        f"dead-lettered by the operator; commands {f['malformedCommandsInjected']} injected, "
        f"{f['malformedCommandsDeadLettered']} dead-lettered by the participants; "
        f"replies undeliverable during the outage {f['repliesUndeliverableDeadLettered']}",
        f"  money       {f['moneyBefore']} cents before, {f['moneyAfter']} after",
        f"  violations  {len(report.violations)}",
    ]
    lines += [f"    VIOLATION {v}" for v in report.violations[:200]]
    if len(report.violations) > 200:
        lines.append(f"    ... and {len(report.violations) - 200} more (see {report.run_dir}/report.json)")
    return "\n".join(lines)


@contextlib.contextmanager
def _stack_for(stack_dir: Path | None, work: Path, log: Log) -> Iterator[StackEndpoints]:
    if stack_dir is not None:
        attached = Stack.attach(stack_dir)
        if attached is None:
            raise ChaosError(f"no running stack in {stack_dir} (python -m saga_testenv --dir {stack_dir} up)")
        log(f"== using the stack in {stack_dir}: its Kafka broker is restarted and its API server frozen once")
        yield attached
        return
    log("== starting a stack of its own for the run")
    with Stack(work / "stack", log=lambda m: log(f"  [testenv] {m}")) as stack:
        yield stack


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saga_harness.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=300, help="how many sagas (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="the seed of the plan and the faults (default: random)")
    parser.add_argument("--short", action="store_true", help="the short form (40 sagas) that `make test` runs")
    parser.add_argument(
        "--stack-dir", type=Path, default=None, help="use this running stack (default: start one of its own)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep logs, databases and report.json here")
    parser.add_argument(
        "--operator-path",
        type=Path,
        default=None,
        help="run the operator's package from this folder (a copy of operator/ with a deliberate bug: does the "
        "run catch it?)",
    )
    parser.add_argument(
        "--finish-timeout", type=float, default=900.0, help="seconds for every saga to end once the faults stop"
    )
    parser.add_argument("--no-kafka-restart", action="store_true")
    parser.add_argument("--no-apiserver-pause", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the world's processes and the stack are stopped on the way out.
    signal.signal(signal.SIGTERM, _terminated)
    # aiokafka logs every refused connection while the broker is down: that is the point of the run.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    config = ChaosConfig(sagas=args.sagas, seed=seed, finish_timeout=args.finish_timeout)
    if args.short:
        config = config.short()
    if args.no_kafka_restart or args.no_apiserver_pause:
        config = ChaosConfig(
            **{
                **asdict(config),
                "restart_kafka": config.restart_kafka and not args.no_kafka_restart,
                "apiserver_pause": 0.0 if args.no_apiserver_pause else config.apiserver_pause,
            }
        )
    with contextlib.ExitStack() as cleanup:
        if args.keep is not None:
            work = args.keep.absolute()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="saga-chaos-")))
        try:
            with _stack_for(args.stack_dir, work, _say) as endpoints:
                operator_env = {"PYTHONPATH": str(args.operator_path.absolute())} if args.operator_path else None
                report = run_chaos(config, endpoints, work / "run", operator_env=operator_env)
        except Exception as exc:
            traceback.print_exc()
            print(f"chaos run could not be carried out: {type(exc).__name__}: {exc}", file=sys.stderr)
            _keep_logs(work, args.keep)
            return 2
        print(format_report(report), flush=True)
        if report.ok:
            print("chaos run passed: nothing lost, nothing applied twice, the money balances")
            return 0
        print(f"chaos run FAILED: {len(report.violations)} violation(s)", file=sys.stderr)
        _keep_logs(work, args.keep)
        return 1


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _keep_logs(work: Path, keep: Path | None) -> None:
    """After a failure, the logs and databases outlive the temporary directory."""
    if keep is not None:
        print(f"logs, databases and report.json in {work}", file=sys.stderr)
        return
    kept = Path(tempfile.mkdtemp(prefix="saga-chaos-failed-"))
    if (work / "run").exists():
        shutil.copytree(work / "run", kept / "run", dirs_exist_ok=True)
    print(f"logs, databases and report.json copied to {kept}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "ChaosConfig",
    "ChaosError",
    "ChaosReport",
    "ChaosWorld",
    "Injector",
    "Redeliverer",
    "SagaPlan",
    "audit",
    "audit_dead_letters",
    "format_report",
    "http_status",
    "main",
    "make_malformed_command",
    "make_malformed_reply",
    "plan",
    "read_books",
    "read_topic",
    "run_chaos",
    "wait_until",
]
