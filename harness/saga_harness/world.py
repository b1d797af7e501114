"""A whole saga-operator installation on a stack: the CRD, the operator, the three buy-video
participants with their databases, and helpers to apply Sagas and read them back with kubectl.

Shared by the end-to-end tests, `make demo`, the chaos run and the benchmarks. Each world has its own
reply topic and consumer group, so several can share one broker (a user's own Kafka) without
crosstalk.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from saga_protocol import REPLY_DEAD_LETTER_TOPIC, command_topic, reply_topic
from saga_testenv import Acl, TopicSpec, run_sync
from saga_testenv.stack import StackEndpoints

from . import kafka_access
from .manifests import buy_video_saga
from .services import Service, operator_service, participant_service

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
CRD_FILE = "saga.dev_sagas.yaml"
POLICY_FILE = "saga.dev_finalizer-policy.yaml"
PARTICIPANT_CRD_FILE = "saga.dev_participants.yaml"
TEMPLATE_CRD_FILE = "saga.dev_sagatemplates.yaml"
#: The demo participants' Participant objects, which the admission policy reads.
REGISTRATION_DIR = REPO / "manifests" / "participants" / "registration"
POLICY_API = "MutatingAdmissionPolicy v1"
PARTICIPANTS = ("videos", "users", "agents")
#: A participant no process of the world serves: tests play it from outside (kcat), on its own topics.
WIRE_PARTICIPANT = "wire"
TERMINAL = ("Succeeded", "Compensated", "Failed", "Rejected")


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
    participants: Path = CRD_DIR / PARTICIPANT_CRD_FILE,
    templates: Path = CRD_DIR / TEMPLATE_CRD_FILE,
    admission: bool = True,
) -> None:
    """Apply the Saga and Participant CRDs, the finalizer admission policy (no policy with ``policy=None``)
    and, unless ``admission=False``, the validating admission policies with the demo participants'
    Participant objects (manifests/participants/registration); wait until a Saga can be created and,
    with ``admission``, until the policies refuse what they should.

    The status policy is rendered for this stack: besides the operator's ServiceAccount and the
    break-glass group it allows the identity of the stack's kubeconfig (``kubectl auth whoami``),
    because that is who the harness runs its operator as (SagaWorld gives it the stack's environment).
    A test that needs a user who may not write status impersonates one (``kubectl --as``).

    Established is not enough. Discovery lags behind it, and the admission policy learns a new CRD's
    schema a few seconds later (~4 s here): until then a create answers 503 "Resource kind ... not
    found". A server-side dry-run create goes through the same admission chain, so it is the probe.
    """
    from saga_operator import admission as policies

    for definition in (crd, participants, templates):
        endpoints.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(definition), check=True)
    if policy is not None:
        if serves_mutating_admission_policies(endpoints):
            endpoints.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(policy), check=True)
        else:
            # An older cluster (a user's kind, say): the operator adds the finalizer itself.
            print(f"[world] this cluster serves no {POLICY_API}; {policy.name} not applied", file=sys.stderr)
    for name in ("sagas.saga.dev", "participants.saga.dev", "sagatemplates.saga.dev"):
        endpoints.kubectl("wait", "--for=condition=Established", f"crd/{name}", f"--timeout={timeout:.0f}s", check=True)
    if admission:
        endpoints.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REGISTRATION_DIR), check=True)
        whoami = json.loads(endpoints.kubectl("auth", "whoami", "-o", "json", check=True).stdout)
        harness_operator = whoami["status"]["userInfo"]["username"]
        rendered = policies.render(status_writers=(policies.OPERATOR_USER, harness_operator))
        endpoints.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=rendered, check=True)
    probe = yaml.safe_dump(
        buy_video_saga("crd-ready-probe", {"buyer": "alice", "video": "v-0", "price": 1, "agent": "x"})
    )
    undeclared = buy_video_saga("crd-ready-probe", {})
    undeclared["spec"]["steps"][1]["action"] = "no-such-action"
    deadline = time.monotonic() + timeout
    while True:
        result = endpoints.kubectl("create", "--dry-run=server", "-n", "default", "-o", "name", "-f", "-", input=probe)
        ready = result.returncode == 0
        if ready and admission:
            # The policies and their params are read by informers: wait until they refuse.
            refused = endpoints.kubectl(
                "create", "--dry-run=server", "-n", "default", "-f", "-", input=yaml.safe_dump(undeclared)
            )
            ready = refused.returncode != 0 and policies.PARTICIPANTS_POLICY in refused.stderr
            if not ready:
                result = refused
        if ready:
            return
        if time.monotonic() > deadline:
            raise WorldError(
                f"Sagas could not be created (or were not checked) {timeout:.0f}s after installing the CRD: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        time.sleep(0.3)


class SagaWorld:
    def __init__(self, endpoints: StackEndpoints, run_dir: Path, *, operator_env: Mapping[str, str] | None = None):
        self.endpoints = endpoints
        self.run_dir = run_dir
        self.data_dir = run_dir / "data"
        self.run_id = uuid.uuid4().hex[:8]
        # Participants reply on saga.replies.<name>. The replies' dead-letter topic is this world's own
        # (saga.replies.dlq in a cluster), so that worlds sharing a broker do not read each other's dead letters.
        self.reply_dead_letter_topic = f"{REPLY_DEAD_LETTER_TOPIC}.{self.run_id}"
        self.consumer_group = f"saga-operator-{self.run_id}"
        # The name each participant service runs under (a chaos world gives them names of their own); its
        # principal is saga-participant-<name>.
        self.participant_names: dict[str, str] = {service: service for service in PARTICIPANTS}
        # The status digest's key, as a mounted Secret would give it: every status the operator writes is signed.
        run_dir.mkdir(parents=True, exist_ok=True)
        self.status_key_file = run_dir / "status-key"
        if not self.status_key_file.exists():
            self.status_key_file.write_text(secrets.token_hex(32))
            self.status_key_file.chmod(0o600)
        settings = {
            "SAGA_STATUS_KEY_FILE": str(self.status_key_file),
            "SAGA_REPLY_DEAD_LETTER_TOPIC": self.reply_dead_letter_topic,
            "SAGA_CONSUMER_GROUP": self.consumer_group,
            "SAGA_PARTICIPANTS": ",".join((*PARTICIPANTS, WIRE_PARTICIPANT)),
            "SAGA_TOPIC_PARTITIONS": "3",
            # One namespace (the caller may name another): tests that run an operator of their own in
            # another namespace are not driven by this one.
            "SAGA_NAMESPACE": "default",
            # The topics are the admin's to create (create_topics, before anything starts).
            "SAGA_CREATE_TOPICS": "false",
            **(operator_env or {}),
        }
        self.operator: Service = operator_service(run_dir, self._env(kafka_access.OPERATOR), **settings)
        #: More replicas of the operator (add_operator): the same settings, so the same consumer group and key.
        self.replicas: list[Service] = []
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

    def reply_topic(self, participant: str) -> str:
        """Where a participant of this world replies (the name it runs under)."""
        return reply_topic(participant)

    @property
    def reply_topics(self) -> list[str]:
        return [reply_topic(name) for name in self.participant_names.values()]

    def reply_topics_of(self, participant: str) -> list[str]:
        """The topics participant ``participant`` may write its replies to: its trusted one."""
        return [reply_topic(participant)]

    @property
    def reply_dead_letter_topics(self) -> list[str]:
        return [self.reply_dead_letter_topic]

    def operator_participants(self) -> list[str]:
        """SAGA_PARTICIPANTS of the operator: the served participants and any played from outside."""
        listed = self.operator.env.get("SAGA_PARTICIPANTS", "")
        return list(dict.fromkeys([*self.participant_names.values(), *(n for n in listed.split(",") if n)]))

    def kafka_topics(self) -> list[TopicSpec]:
        """Every topic this world's processes use, created by the admin before they start."""
        partitions = int(self.operator.env.get("SAGA_TOPIC_PARTITIONS", "3"))
        names = self.operator_participants()
        topics = [TopicSpec(command_topic(p), partitions) for p in names]
        topics += [TopicSpec(f"{command_topic(p)}.dlq", 1) for p in names]
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

    def add_operator(self) -> Service:
        """Another replica of the operator (not started): the first one's settings, its own port and log."""
        replica = operator_service(self.run_dir, self.operator.env)
        replica.name = f"operator-{len(self.replicas) + 2}"
        self.replicas.append(replica)
        return replica

    @property
    def operators(self) -> list[Service]:
        return [self.operator, *self.replicas]

    def stop(self) -> None:
        for service in (*self.operators, *self.participants.values()):
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
