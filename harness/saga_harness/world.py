"""A whole saga-operator installation on a stack: the CRD, the operator, the three buy-video
participants with their databases, and helpers to apply Sagas and read them back with kubectl.

Shared by the end-to-end tests, `make demo`, the chaos run and the benchmarks. Each world has its own
reply topic and consumer group, so several can share one broker (a user's own Kafka) without
crosstalk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from saga_testenv import Acl, TopicSpec, run_sync
from saga_testenv.stack import StackEndpoints

from . import kafka_access
from .manifests import buy_video_saga
from .services import Service, operator_service, participant_service

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
CRD_FILE = "saga.dev_sagas.yaml"
POLICY_FILE = "saga.dev_finalizer-policy.yaml"
POLICY_API = "MutatingAdmissionPolicy v1"
PARTICIPANTS = ("videos", "users", "agents")
TERMINAL = ("Succeeded", "Compensated", "Failed")


class WorldError(RuntimeError):
    pass


def serves_mutating_admission_policies(endpoints: StackEndpoints) -> bool:
    """Whether the cluster serves MutatingAdmissionPolicy as admissionregistration.k8s.io/v1 (1.36 does)."""
    result = endpoints.kubectl("get", "--raw", "/apis/admissionregistration.k8s.io/v1")
    if result.returncode != 0:
        return False
    resources = json.loads(result.stdout).get("resources", [])
    return any(r.get("name") == "mutatingadmissionpolicies" for r in resources)


def install_crd(
    endpoints: StackEndpoints,
    timeout: float = 60.0,
    *,
    crd: Path = CRD_DIR / CRD_FILE,
    policy: Path | None = CRD_DIR / POLICY_FILE,
) -> None:
    """Apply the Saga CRD and the finalizer admission policy (from crds/ unless told otherwise; no policy
    with ``policy=None``) and wait until a Saga can be created.

    Established is not enough. Discovery lags behind it, and the admission policy learns a new CRD's
    schema a few seconds later (~4 s here): until then a create answers 503 "Resource kind ... not
    found". A server-side dry-run create goes through the same admission chain, so it is the probe.
    """
    endpoints.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd), check=True)
    if policy is not None:
        if serves_mutating_admission_policies(endpoints):
            endpoints.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(policy), check=True)
        else:
            # An older cluster (a user's kind, say): the operator adds the finalizer itself.
            print(f"[world] this cluster serves no {POLICY_API}; {policy.name} not applied", file=sys.stderr)
    endpoints.kubectl(
        "wait", "--for=condition=Established", "crd/sagas.saga.dev", f"--timeout={timeout:.0f}s", check=True
    )
    probe = yaml.safe_dump(
        buy_video_saga("crd-ready-probe", {"buyer": "alice", "video": "v-0", "price": 1, "agent": "x"})
    )
    deadline = time.monotonic() + timeout
    while True:
        result = endpoints.kubectl("create", "--dry-run=server", "-n", "default", "-o", "name", "-f", "-", input=probe)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise WorldError(
                f"Sagas could not be created {timeout:.0f}s after installing the CRD: {result.stderr.strip()}"
            )
        time.sleep(0.3)


class SagaWorld:
    def __init__(self, endpoints: StackEndpoints, run_dir: Path, *, operator_env: Mapping[str, str] | None = None):
        self.endpoints = endpoints
        self.run_dir = run_dir
        self.data_dir = run_dir / "data"
        self.run_id = uuid.uuid4().hex[:8]
        self.reply_topic = f"saga.replies.{self.run_id}"
        self.consumer_group = f"saga-operator-{self.run_id}"
        # The name each participant service runs under (a chaos world gives them names of their own); its
        # principal is saga-participant-<service> whatever the name.
        self.participant_names: dict[str, str] = {service: service for service in PARTICIPANTS}
        settings = {
            "SAGA_REPLY_TOPIC": self.reply_topic,
            "SAGA_CONSUMER_GROUP": self.consumer_group,
            "SAGA_PARTICIPANTS": ",".join(PARTICIPANTS),
            "SAGA_TOPIC_PARTITIONS": "3",
            # One namespace (the caller may name another): tests that run an operator of their own in
            # another namespace are not driven by this one.
            "SAGA_NAMESPACE": "default",
            # The topics are the admin's to create (create_topics, before anything starts).
            "SAGA_CREATE_TOPICS": "false",
            **(operator_env or {}),
        }
        self.operator: Service = operator_service(run_dir, self._env(kafka_access.OPERATOR), **settings)
        self.participants: dict[str, Service] = {
            name: participant_service(
                name,
                self.data_dir,
                run_dir,
                {**self._env(kafka_access.participant_principal(name)), "SAGA_CREATE_TOPICS": "false"},
            )
            for name in PARTICIPANTS
        }

    # ---- Kafka: principals, ACLs, topics ------------------------------------------------------

    def _env(self, principal: str) -> dict[str, str]:
        """The stack's variables with ``principal``'s KAFKA_* (a principal the stack lacks yet is made by
        ``provision_kafka``: its password file is read when the process starts)."""
        return kafka_access.service_env(self.endpoints, principal)

    def reply_topics_of(self, participant: str) -> list[str]:
        """Where a participant of this world replies: the operator's reply topic of this world."""
        return [self.reply_topic]

    @property
    def reply_dead_letter_topics(self) -> list[str]:
        return [f"{self.reply_topic}.dlq"]

    def kafka_topics(self) -> list[TopicSpec]:
        """Every topic this world's processes use, created by the admin before they start."""
        partitions = int(self.operator.env.get("SAGA_TOPIC_PARTITIONS", "3"))
        names = self.participant_names.values()
        topics = [TopicSpec(f"saga.commands.{p}", partitions) for p in names]
        topics += [TopicSpec(f"saga.commands.{p}.dlq", 1) for p in names]
        topics += [TopicSpec(t, partitions) for p in names for t in self.reply_topics_of(p)]
        topics += [TopicSpec(t, 1) for t in self.reply_dead_letter_topics]
        return list({t.name: t for t in topics}.values())

    def kafka_grants(self) -> dict[str, list[Acl]]:
        """docs/operations.md's ACL table for this world's principals."""
        grants = {
            kafka_access.OPERATOR: kafka_access.operator_acls(
                group=self.consumer_group, reply_dead_letter_topics=self.reply_dead_letter_topics
            )
        }
        for service, name in self.participant_names.items():
            grants[kafka_access.participant_principal(service)] = kafka_access.participant_acls(
                name, reply_topics=self.reply_topics_of(name)
            )
        return grants

    def provision_kafka(self) -> None:
        """As the admin: the principals, their ACLs, the topics."""
        kafka_access.provision(self.endpoints, self.kafka_grants())
        run_sync(kafka_access.create_topics(self.endpoints, self.kafka_topics()))

    # ---- life cycle ---------------------------------------------------------------------------

    def install_crd(self) -> None:
        install_crd(self.endpoints)

    def seed(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "saga_buyvideo.cli", "seed", "--data-dir", str(self.data_dir)],
            check=True,
            capture_output=True,
        )

    def start(self) -> SagaWorld:
        self.install_crd()
        self.seed()
        self.provision_kafka()
        for service in self.participants.values():
            service.start(wait=False)
        self.operator.start(wait=False)
        for service in (*self.participants.values(), self.operator):
            service.wait_ready()
        return self

    def stop(self) -> None:
        for service in (self.operator, *self.participants.values()):
            service.stop()

    def __enter__(self) -> SagaWorld:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- kubectl ------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None) -> str:
        result = self.endpoints.kubectl(*args, input=input)
        if result.returncode != 0:
            raise WorldError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def apply(self, manifest: Mapping[str, Any]) -> str:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(dict(manifest)))
        return str(manifest["metadata"]["name"])

    def apply_all(self, manifests: Iterable[Mapping[str, Any]]) -> None:
        """One kubectl call for many Sagas (a List), as a user applying a folder would."""
        doc = {"apiVersion": "v1", "kind": "List", "items": [dict(m) for m in manifests]}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))

    def get(self, name: str, namespace: str = "default") -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.kubectl("get", "saga", name, "-n", namespace, "-o", "json"))
        return body

    def phases(self, namespace: str | None = "default") -> dict[str, str]:
        scope = ["-n", namespace] if namespace else ["-A"]
        items = json.loads(self.kubectl("get", "sagas", *scope, "-o", "json"))["items"]
        return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}

    def wait_terminal(
        self, names: Iterable[str], namespace: str = "default", timeout: float = 120.0
    ) -> dict[str, dict[str, Any]]:
        """Wait until every named saga is in a terminal phase; return their bodies."""
        pending = set(names)
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while pending:
            items = json.loads(self.kubectl("get", "sagas", "-n", namespace, "-o", "json"))["items"]
            for item in items:
                name = item["metadata"]["name"]
                if name in pending and (item.get("status") or {}).get("phase") in TERMINAL:
                    done[name] = item
                    pending.discard(name)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise WorldError(
                    f"sagas not finished after {timeout:.0f}s: {sorted(pending)}\n{self.operator.log_tail()}"
                )
            time.sleep(0.3)
        return done

    def events(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        out = self.kubectl(
            "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
        )
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def ledger(self) -> dict[str, Any]:
        from saga_buyvideo.demo import read_ledger

        result: dict[str, Any] = read_ledger(self.data_dir)
        return result
