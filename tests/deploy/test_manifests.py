"""The manifests, read as built by kustomize: what every kind-cluster object must look like.

No API server here (only `kubectl kustomize`); tests/deploy/test_server_dry_run.py sends the same
objects to a real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from saga_buyvideo import SERVICES, build
from saga_buyvideo.demo import DEMO_AGENTS, DEMO_USERS
from saga_operator import admission
from saga_protocol import REPLY_DEAD_LETTER_TOPIC, CommandKind, command_topic, dead_letter_topic, reply_topic
from saga_testenv import versions

from .helpers import (
    EXAMPLES,
    KUSTOMIZATIONS,
    MANIFESTS,
    NAMESPACE,
    REPO,
    find,
    kustomize,
    objects,
    pod_spec,
    workloads,
)

OUR_IMAGE = "saga-operator"
KIND_IMAGE = "saga-operator:dev"


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_crd_copy_matches_generated() -> None:
    """kustomize reads no file outside its root, so manifests/ carries copies of the generated files."""
    copies = {
        "saga.dev_sagas.yaml": MANIFESTS / "base" / "crds",
        "saga.dev_participants.yaml": MANIFESTS / "base" / "crds",
        "saga.dev_sagatemplates.yaml": MANIFESTS / "base" / "crds",
        "saga.dev_admission-policies.yaml": MANIFESTS / "admission",
        "saga.dev_finalizer-policy.yaml": MANIFESTS / "admission" / "finalizer",
    }
    for name, directory in copies.items():
        generated = (REPO / "crds" / name).read_text()
        copy = (directory / name).read_text()
        assert copy == generated, f"refresh the copy of crds/{name} in {directory.name}: make generate"
    assert sorted(p.name for p in (REPO / "crds").glob("*.yaml")) == sorted(copies), (
        "every generated file in crds/ must be copied into manifests/ and listed in a kustomization"
    )


CLUSTER_SCOPED = (
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "Participant",
)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomize_builds(path: str) -> None:
    docs = objects(path)
    assert docs, f"manifests/{path} builds to nothing"
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']} {doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "saga-operator"


def test_kind_overlay_has_everything() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in objects("overlays/kind")}
    for expected in [
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", "sagas.saga.dev"),
        ("CustomResourceDefinition", "participants.saga.dev"),
        ("CustomResourceDefinition", "sagatemplates.saga.dev"),
        ("ServiceAccount", "saga-operator"),
        ("ClusterRole", "saga-operator"),
        ("ClusterRoleBinding", "saga-operator"),
        ("Deployment", "saga-operator"),
        ("StatefulSet", "kafka"),
        ("Service", "kafka"),
        ("Job", "kafka-topics"),
        ("Job", "kafka-access"),
        *[("Deployment", s) for s in SERVICES],
        *[("PersistentVolumeClaim", f"{s}-data") for s in SERVICES],
    ]:
        assert expected in kinds


def test_kind_overlay_runs_the_loaded_image_without_pulling() -> None:
    for workload in workloads(objects("overlays/kind")):
        for container in containers(pod_spec(workload)):
            if container["image"].startswith("apache/kafka"):
                # the broker runs the same Kafka version as the local stack the tests use
                assert container["image"] == f"apache/kafka:{versions.KAFKA_VERSION}"
                continue
            assert container["image"] == KIND_IMAGE, workload["metadata"]["name"]
            assert container["imagePullPolicy"] == "IfNotPresent", workload["metadata"]["name"]


def test_operator_deployment() -> None:
    docs = objects("overlays/kind")
    deployment = find(docs, "Deployment", "saga-operator")
    # Several replicas share the sagas (docs/architecture.md): a rollout starts the new pod before the old one
    # goes, spread over the nodes, and a PodDisruptionBudget lets a drain take one at a time.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    selector = deployment["spec"]["selector"]["matchLabels"]
    (spread,) = pod_spec(deployment)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["labelSelector"]["matchLabels"] == selector
    budget = find(docs, "PodDisruptionBudget", "saga-operator")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    (settings,) = [d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("saga-op")]
    assert settings["SAGA_PARTICIPANTS"]  # the replicas shard over these participants' reply topics
    spec = pod_spec(deployment)
    assert spec["serviceAccountName"] == "saga-operator"
    (container,) = spec["containers"]
    assert container["command"] == ["saga-operator"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    (env_from,) = container["envFrom"]
    config = find(docs, "ConfigMap", env_from["configMapRef"]["name"])["data"]
    assert config["SAGA_HTTP_PORT"] == "8080"  # the port the probes use
    assert config["SAGA_NAMESPACE"] == ""  # all namespaces, hence the ClusterRole
    assert config["SAGA_PARTICIPANTS"].split(",") == list(SERVICES)
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == f"kafka.{NAMESPACE}.svc:9092"


def test_admission_policies_name_the_operator_of_the_manifests() -> None:
    """The status policy lets exactly the operator's ServiceAccount of manifests/base (and the break-glass
    group) write Saga status; RBAC of the break-glass group is the policy's own, in manifests/admission."""
    base = objects("base")
    account = find(base, "ServiceAccount", "saga-operator")
    user = f"system:serviceaccount:{account['metadata']['namespace']}:{account['metadata']['name']}"
    assert (
        find(base, "Deployment", "saga-operator")["spec"]["template"]["spec"]["serviceAccountName"] == "saga-operator"
    )
    assert admission.OPERATOR_USER == user
    docs = objects("admission")
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    bindings = {d["spec"]["policyName"] for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert policies == bindings == set(admission.POLICIES)
    status = find(docs, "ValidatingAdmissionPolicy", admission.STATUS_WRITERS_POLICY)
    (rule,) = status["spec"]["validations"]
    assert rule["expression"] == (
        f"request.userInfo.username in ['{user}'] || "
        f"request.userInfo.groups.exists(g, g in ['{admission.STATUS_WRITERS_GROUP}'])"
    )
    binding = find(docs, "ClusterRoleBinding", admission.STATUS_WRITER_ROLE)
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": admission.STATUS_WRITERS_GROUP}
    ]
    for policy in (d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"):
        assert policy["spec"]["failurePolicy"] == "Fail", policy["metadata"]["name"]
    participants = find(docs, "ValidatingAdmissionPolicyBinding", admission.PARTICIPANTS_POLICY)
    assert participants["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Deny"}


def test_every_demo_participant_is_registered_with_what_it_serves(tmp_path: Path) -> None:
    """manifests/participants/registration: one Participant per buy-video service, declaring exactly
    the actions it has handlers for, each with the compensation the examples use."""
    registered = {d["metadata"]["name"]: d["spec"] for d in objects("participants/registration")}
    assert sorted(registered) == sorted(SERVICES)
    assert all(
        d["kind"] == "Participant" and "namespace" not in d["metadata"] for d in objects("participants/registration")
    )
    for name, spec in registered.items():
        participant = build(name, tmp_path)
        for action in spec["actions"]:
            assert participant.handler_for(CommandKind.ACTION, action["name"]) is not None, (name, action)
            assert participant.handler_for(CommandKind.COMPENSATION, action["compensation"]) is not None, (name, action)
        # the examples go to any namespace they are applied to (docs/kind.md)
        assert spec["namespaces"] == ["*"]
    for example in sorted(EXAMPLES.glob("*.yaml")):
        for step in yaml.safe_load(example.read_text())["spec"]["steps"]:
            declared = {a["name"]: a.get("compensation") for a in registered[step["participant"]]["actions"]}
            assert declared[step["action"]] == step.get("compensation"), (example.name, step)


def test_every_pod_is_hardened() -> None:
    """The issue's securityContext, on every container of every workload (Kafka's included)."""
    for workload in workloads(objects("overlays/kind")):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("runAsUser", 0) > 0, name
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert spec.get("enableServiceLinks") is False, name
        emptydirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(spec):
            where = f"{name}/{container['name']}"
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            # read-only root: a writable /tmp from an emptyDir
            assert any(m["mountPath"] == "/tmp" and m["name"] in emptydirs for m in container["volumeMounts"]), where


def test_only_the_operator_gets_an_api_token() -> None:
    docs = objects("overlays/kind")
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        expected = name == "saga-operator"
        assert pod_spec(workload).get("automountServiceAccountToken") is expected, name
    participant_sa = find(docs, "ServiceAccount", "saga-participant")
    assert participant_sa["automountServiceAccountToken"] is False


def test_no_role_but_the_operators() -> None:
    rbac = [
        d for d in objects("overlays/kind") if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    ]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rbac) == [
        ("ClusterRole", "saga-operator"),
        ("ClusterRoleBinding", "saga-operator"),
    ]
    binding = find(rbac, "ClusterRoleBinding", "saga-operator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "saga-operator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "saga-operator", "namespace": NAMESPACE}]


def test_operator_role_is_exactly_what_it_needs() -> None:
    """Widening the role must be a deliberate change of this test (and of docs/kind.md)."""
    role = find(objects("base"), "ClusterRole", "saga-operator")
    rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in role["rules"])
    assert rules == sorted(
        [
            (("saga.dev",), ("sagas",), ("delete", "get", "list", "patch", "watch")),  # delete: the TTL
            (("saga.dev",), ("sagas/status",), ("patch",)),
            (("saga.dev",), ("sagatemplates",), ("get", "list", "watch")),
            (("saga.dev",), ("sagatemplates/status",), ("patch",)),  # the usage counts (SAGAS, RUNNING)
            (("",), ("events",), ("create",)),
        ]
    )
    assert all("resourceNames" not in r and "nonResourceURLs" not in r for r in role["rules"])
    assert "aggregationRule" not in role


def test_participants() -> None:
    docs = objects("overlays/kind")
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for service in SERVICES:
        deployment = find(docs, "Deployment", service)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # one SQLite writer per volume
        spec = pod_spec(deployment)
        (seed,) = spec["initContainers"]
        assert seed["command"] == ["saga-participant", "seed"]
        (container,) = spec["containers"]
        assert container["command"] == ["saga-participant", "run", service]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        (volume,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == f"{service}-data"
        assert f"{service}-data" in claims
        (env_from,) = container["envFrom"]
        config = find(docs, "ConfigMap", env_from["configMapRef"]["name"])["data"]
        # the CLI binds 127.0.0.1 by default: the kubelet's probes need every interface
        assert config["SAGA_HTTP_HOST"] == "0.0.0.0"
        assert config["SAGA_HTTP_PORT"] == "8080"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[config["SAGA_DATA_DIR"]] == volume["name"]
        assert {m["mountPath"]: m["name"] for m in seed["volumeMounts"]}[config["SAGA_DATA_DIR"]] == volume["name"]


@pytest.mark.parametrize(
    ("workload", "principal"),
    [("saga-operator", "saga-operator"), *[(s, f"saga-participant-{s}") for s in SERVICES]],
)
def test_each_kafka_client_authenticates_as_its_own_principal(workload: str, principal: str) -> None:
    """SASL_SSL with SCRAM-SHA-512 as the principal, its password from its Secret (made by
    kind/kafka-secrets.sh) as a mounted file readable by the pod's group only, the broker's
    CA from the ConfigMap kafka-ca; and no topic creation (the Job kafka-topics does that, as the admin)."""
    docs = objects("overlays/kind")
    spec = pod_spec(find(docs, "Deployment", workload))
    container = next(c for c in spec["containers"] if c["name"] in ("operator", workload))
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
    assert env["KAFKA_SASL_USERNAME"]["value"] == principal
    assert "KAFKA_SASL_PASSWORD" not in env  # never the password itself in the environment
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    password, ca = env["KAFKA_SASL_PASSWORD_FILE"]["value"], env["KAFKA_SSL_CA_FILE"]["value"]
    secret_mount = mounts[password.rsplit("/", 1)[0]]
    assert secret_mount["readOnly"] is True
    secret = volumes[secret_mount["name"]]["secret"]
    assert secret["secretName"] == f"kafka-user-{principal}"
    assert secret["items"] == [{"key": "password", "path": password.rsplit("/", 1)[1]}]
    assert (
        secret["defaultMode"] == 0o440 and spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    )
    ca_mount = mounts[ca.rsplit("/", 1)[0]]
    assert volumes[ca_mount["name"]]["configMap"]["name"] == "kafka-ca"
    config = find(docs, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    assert config["SAGA_CREATE_TOPICS"] == "false"
    script = (REPO / "kind" / "kafka-secrets.sh").read_text()
    assert "kafka-user-$principal" in script and "create configmap kafka-ca" in script


def test_kafka() -> None:
    docs = objects("kafka")
    statefulset = find(docs, "StatefulSet", "kafka")
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == "kafka"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    service = find(docs, "Service", "kafka")
    assert service["spec"]["clusterIP"] == "None"
    properties = (MANIFESTS / "kafka" / "server.properties").read_text()
    assert "process.roles=broker,controller" in properties  # KRaft, no ZooKeeper
    assert "auto.create.topics.enable=false" in properties


def test_kafka_authenticates_on_every_listener_and_authorizes_every_request() -> None:
    text = (MANIFESTS / "kafka" / "server.properties").read_text()
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    protocols = dict(entry.split(":") for entry in props["listener.security.protocol.map"].split(","))
    names = [entry.split("://")[0] for entry in props["listeners"].split(",")]
    assert sorted(names) == sorted(protocols) == ["BROKER", "CONTROLLER"]
    assert set(protocols.values()) == {"SASL_SSL"}  # the controller listener too; no PLAINTEXT anywhere
    assert not [k for k, v in props.items() if "PLAINTEXT" in v]
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.controller.protocol"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:saga-broker;User:saga-admin"
    assert props["ssl.client.auth"] == "none"  # SCRAM names the principal, not a certificate
    # nothing secret in the file: passwords come from Secrets at start (start-kafka.sh)
    assert "password=" not in text and "sasl.jaas.config" not in text


def test_kafka_secrets_come_from_secrets_never_from_the_manifests() -> None:
    docs = objects("overlays/kind")
    assert not [d for d in docs if d["kind"] == "Secret"]
    kafka = pod_spec(find(docs, "StatefulSet", "kafka"))
    secrets = {v["name"]: v["secret"]["secretName"] for v in kafka["volumes"] if "secret" in v}
    assert secrets == {
        "tls": "kafka-tls",
        "user-saga-broker": "kafka-user-saga-broker",
        "user-saga-admin": "kafka-user-saga-admin",
    }
    for workload in workloads(docs):
        for container in containers(pod_spec(workload)):
            for env in container.get("env", []):
                assert "secretKeyRef" not in env.get("valueFrom", {}), "secrets are files, never environment"


def _job_participants(name: str) -> list[str]:
    (container,) = pod_spec(find(objects("kafka"), "Job", name))["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return str(env["PARTICIPANTS"]).split()


def test_topics_job_creates_the_protocols_topics() -> None:
    (container,) = pod_spec(find(objects("kafka"), "Job", "kafka-topics"))["containers"]
    assert container["command"] == ["/bin/bash", "/etc/kafka-config/topics.sh"]
    assert _job_participants("kafka-topics") == list(SERVICES)
    script = (MANIFESTS / "kafka" / "topics.sh").read_text()
    assert "for participant in $PARTICIPANTS; do" in script
    assert f"create {REPLY_DEAD_LETTER_TOPIC} " in script
    # the loop body, expanded per participant, names the topics the way saga_protocol does; the reply
    # topic is one per participant (saga.replies.<participant>): the topic tells who replied
    for participant in SERVICES:
        expanded = script.replace("$participant", participant)
        assert f'create "{command_topic(participant)}" 6' in expanded
        assert f'create "{reply_topic(participant)}" 6' in expanded
        assert f'create "{dead_letter_topic(command_topic(participant))}" 1' in expanded


def test_access_job_grants_each_principal_its_part() -> None:
    """The ACL table of docs/operations.md, as access.sh runs it (tests/deploy/test_kafka_secured.py
    runs it against a broker)."""
    (container,) = pod_spec(find(objects("kafka"), "Job", "kafka-access"))["containers"]
    assert container["command"] == ["/bin/bash", "/etc/kafka-config/access.sh"]
    assert _job_participants("kafka-access") == list(SERVICES)
    script = " ".join((MANIFESTS / "kafka" / "access.sh").read_text().replace("\\\n", " ").split())
    op = '--allow-principal "$operator"'
    assert f"{op} --operation Write --resource-pattern-type prefixed --topic saga.commands." in script
    assert f"{op} --operation Read --resource-pattern-type prefixed --topic saga.replies." in script
    assert f"{op} --operation Read --group saga-operator" in script
    assert f"{op} --operation Write --topic {REPLY_DEAD_LETTER_TOPIC}" in script
    p = '--allow-principal "$principal"'
    assert 'principal="User:saga-participant-$participant"' in script
    assert (
        f'{p} --operation Read --topic "saga.commands.$participant" --group "saga-participant-$participant"' in script
    )
    assert (
        f'{p} --operation Write --topic "saga.replies.$participant" --topic "saga.commands.$participant.dlq"' in script
    )
    assert script.count("acl --allow-principal") == 6  # nothing else, and no cluster ACL
    assert "--cluster" not in script


# ---- the examples --------------------------------------------------------------------------------

EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def load_example(name: str) -> dict[str, Any]:
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    assert len(docs) == 1, f"{name}: one Saga per file"
    return docs[0]


def test_the_three_examples_exist() -> None:
    assert EXAMPLE_FILES == [
        "buy-video-fails-at-agent.yaml",
        "buy-video-fails-at-debit.yaml",
        "buy-video-succeeds.yaml",
    ]


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_example_steps_exist_in_the_participants(name: str, tmp_path: Path) -> None:
    saga = load_example(name)
    assert saga["apiVersion"] == "saga.dev/v1alpha1" and saga["kind"] == "Saga"
    assert saga["metadata"]["name"] == Path(name).stem
    assert "namespace" not in saga["metadata"], "examples go to the namespace they are applied to"
    assert saga["metadata"]["labels"]["app.kubernetes.io/part-of"] == "saga-demo"  # make kind-demo selects it
    for step in saga["spec"]["steps"]:
        participant = build(step["participant"], tmp_path)
        assert participant.handler_for(CommandKind.ACTION, step["action"]) is not None, step
        assert participant.handler_for(CommandKind.COMPENSATION, step["compensation"]) is not None, step


def test_examples_fit_the_seed_data() -> None:
    """Each example ends the way its name says with the data `saga-participant seed` writes."""

    def payload(name: str) -> dict[str, Any]:
        body: dict[str, Any] = load_example(name)["spec"]["payload"]
        return body

    ok = payload("buy-video-succeeds.yaml")
    assert DEMO_USERS[ok["buyer"]] >= ok["price"] and DEMO_AGENTS[ok["agent"]][0] == "open"
    debit = payload("buy-video-fails-at-debit.yaml")
    assert DEMO_USERS[debit["buyer"]] < debit["price"]
    agent = payload("buy-video-fails-at-agent.yaml")
    assert DEMO_USERS[agent["buyer"]] >= agent["price"] and DEMO_AGENTS[agent["agent"]][0] == "closed"
    # distinct buyers and videos: the sagas run at the same time without meeting each other's effects
    assert len({(p["buyer"], p["video"]) for p in (ok, debit, agent)}) == 3
    assert len({p["buyer"] for p in (ok, debit, agent)}) == 3


def test_kustomize_output_is_deterministic() -> None:
    kustomize.cache_clear()
    first = kustomize("overlays/kind")
    kustomize.cache_clear()
    assert kustomize("overlays/kind") == first
