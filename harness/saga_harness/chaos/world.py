"""An isolated saga world for one chaos run (or one chaos test), and the run's accounts seeded into it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from saga_buyvideo import SCHEMAS, database_path
from saga_participants import SqliteStore
from saga_protocol import command_topic, reply_topic
from saga_testenv.stack import StackEndpoints

from ..manifests import buy_video_saga
from ..services import Service
from ..world import PARTICIPANTS, SagaWorld
from .plan import Accounts


class ChaosWorld:
    """A `SagaWorld` of its own: its namespace (the operator watches only that one), its dead-letter topic and
    consumer group, and participants with their own names (`videos-<run id>`, ...), hence their own
    command and reply topics and consumer groups, so that nothing left over from another world reaches it."""

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
        self.world.participant_names = dict(self.names)
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
    def operators(self) -> list[Service]:
        return self.world.operators

    def add_replicas(self, count: int) -> None:
        """More operator replicas (started with the world): the first one's settings, so one consumer group."""
        for _ in range(count):
            self.world.add_operator()

    @property
    def services(self) -> list[Service]:
        return [*self.operators, *self.participants.values()]

    @property
    def data_dir(self) -> Path:
        return self.world.data_dir

    @property
    def reply_topic(self) -> str:
        """The reply topic malformed replies are injected on: that of users, the debit-buyer step's participant."""
        return reply_topic(self.names["users"])

    @property
    def reply_topics(self) -> list[str]:
        return [reply_topic(name) for name in self.names.values()]

    @property
    def reply_dead_letter_topic(self) -> str:
        return self.world.reply_dead_letter_topic

    def trusted_reply_topic(self, service: str) -> str:
        return reply_topic(self.names[service])

    @property
    def operator_group(self) -> str:
        return self.world.consumer_group

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
        self.world.provision_kafka()
        for service in self.participants.values():
            service.start(wait=False)
        if operator:
            self.operator.start(wait=False)
            for replica in self.world.replicas:
                replica.start(wait=False)
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
        return buy_video_saga(
            name,
            payload,
            namespace=self.namespace,
            participants=self.names,
            timeout_seconds=timeout_seconds,
            retry=retry or {"limit": 3, "backoffSeconds": 1, "maxBackoffSeconds": 4},
            abort=abort,
        )

    def apply(self, manifests: Sequence[Mapping[str, Any]]) -> None:
        """One `kubectl apply` of many Sagas (a List)."""
        self.world.apply_all(manifests)

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
    users = SqliteStore(database_path(data_dir, "users"), schema=SCHEMAS["users"]).connect()
    try:
        users.execute("BEGIN IMMEDIATE")
        users.executemany("INSERT OR REPLACE INTO accounts (user_id, balance) VALUES (?, ?)", accounts.users.items())
        users.execute("COMMIT")
    finally:
        users.close()
    agents = SqliteStore(database_path(data_dir, "agents"), schema=SCHEMAS["agents"]).connect()
    try:
        agents.execute("BEGIN IMMEDIATE")
        agents.executemany(
            "INSERT OR REPLACE INTO agents (agent_id, status, balance) VALUES (?, ?, ?)",
            [(agent, status, balance) for agent, (status, balance) in accounts.agents.items()],
        )
        agents.execute("COMMIT")
    finally:
        agents.close()
