"""The kind path's Kafka security, run for real without kind.

`kind/kafka-secrets.sh` makes its Secrets in a namespace of the local stack's API server; then the
StatefulSet's own script (manifests/kafka/start-kafka.sh) starts a broker on this machine's JVM with
manifests/kafka/server.properties and those Secrets as the pod would mount them (only the paths and the
ports differ), and the Jobs' scripts (topics.sh, access.sh) run against it as the admin. The clients
then find what docs/operations.md promises: every principal can do its part and nothing else.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from cryptography import x509

from saga_buyvideo import SERVICES
from saga_testenv import build, ensure_topics, kubectl_path, procs, versions, wait_for_broker
from saga_testenv.kafka_auth import TOOL_JVM_OPTIONS, TOOLS_LOG4J2
from saga_testenv.stack import _LOG4J2

from .helpers import MANIFESTS, REPO, Kubectl, find, objects, ok

pytestmark = pytest.mark.stack

PRINCIPALS = ["saga-admin", "saga-broker", "saga-operator", *[f"saga-participant-{s}" for s in SERVICES]]

#: Kafka's scripts in the image, and the classes behind them on the local classpath.
TOOLS = {
    "kafka-storage.sh": "kafka.tools.StorageTool",
    "kafka-topics.sh": "org.apache.kafka.tools.TopicCommand",
    "kafka-configs.sh": "kafka.admin.ConfigCommand",
    "kafka-acls.sh": "org.apache.kafka.tools.AclCommand",
}


def _secrets_script(stack_kubeconfig: Path, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KUBECTL": f"{kubectl_path()} --kubeconfig {stack_kubeconfig}",
        "NAMESPACE": namespace,
        "PARTICIPANTS": " ".join(SERVICES),
    }
    return subprocess.run(
        ["bash", str(REPO / "kind" / "kafka-secrets.sh")], capture_output=True, text=True, env=env, timeout=180
    )


def _data(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, str]:
    obj = json.loads(ok(kubectl("get", kind, name, "-n", namespace, "-o", "json"), f"get {kind} {name}"))
    data: dict[str, str] = obj.get("data", {})
    if kind == "secret":
        return {k: base64.b64decode(v).decode() for k, v in data.items()}
    return data


@pytest.fixture(scope="module")
def secrets_namespace(stack: Any, kubectl: Kubectl) -> Iterator[str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    name = f"kafka-secrets-{uuid.uuid4().hex[:6]}"
    ok(kubectl("create", "namespace", name), "creating the namespace")
    first = _secrets_script(stack.kubeconfig, name)
    assert first.returncode == 0, first.stdout + first.stderr
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def test_the_secrets_script_makes_every_secret_once(stack: Any, kubectl: Kubectl, secrets_namespace: str) -> None:
    ns = secrets_namespace
    tls = _data(kubectl, ns, "secret", "kafka-tls")
    assert set(tls) == {"tls.crt", "tls.key", "ca.crt"}
    assert _data(kubectl, ns, "configmap", "kafka-ca") == {"ca.crt": tls["ca.crt"]}
    cert = x509.load_pem_x509_certificate(tls["tls.crt"].encode())
    ca = x509.load_pem_x509_certificate(tls["ca.crt"].encode())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(sans.get_values_for_type(x509.DNSName))
    # the bootstrap name, the name the broker advertises (kafka-0.kafka.<ns>.svc) and the controller's
    assert {"kafka", f"kafka.{ns}.svc", f"*.kafka.{ns}.svc", "localhost"} <= names
    passwords = []
    for principal in PRINCIPALS:
        user = _data(kubectl, ns, "secret", f"kafka-user-{principal}")
        assert user["username"] == principal
        assert len(user["password"]) >= 40
        passwords.append(user["password"])
    assert len(set(passwords)) == len(passwords)
    types = ok(kubectl("get", "secrets", "-n", ns, "-o", "jsonpath={range .items[*]}{.type}{'\\n'}{end}"), "types")
    assert sorted(set(types.split())) == ["kubernetes.io/basic-auth", "kubernetes.io/tls"]

    # a second run changes nothing: no password, key or certificate is replaced behind the broker's back
    before = _versions(kubectl, ns)
    assert {"secret/kafka-tls", "configmap/kafka-ca"} <= set(before)
    again = _secrets_script(stack.kubeconfig, ns)
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout
    assert _versions(kubectl, ns) == before


def _versions(kubectl: Kubectl, ns: str) -> dict[str, str]:
    """kind/name -> resourceVersion of every Secret and ConfigMap in `ns` (a dict: kubectl's order is not stable)."""
    listing = json.loads(ok(kubectl("get", "secrets,configmaps", "-n", ns, "-o", "json"), "versions"))
    return {
        f"{item['kind'].lower()}/{item['metadata']['name']}": item["metadata"]["resourceVersion"]
        for item in listing["items"]
    }


class KindBroker:
    """manifests/kafka's broker on the local JVM, with a namespace's Secrets as its pod would see them."""

    def __init__(self, root: Path, kubectl: Kubectl, namespace: str) -> None:
        self.root = root
        self.ns = namespace
        port, controller = procs.free_ports(2)
        self.bootstrap = f"localhost:{port}"
        self.users = root / "users"
        self.tls = root / "tls"
        self.ca = root / "ca"
        for principal in PRINCIPALS:
            for key, value in _data(kubectl, namespace, "secret", f"kafka-user-{principal}").items():
                self._write(self.users / principal / key, value)
        for key, value in _data(kubectl, namespace, "secret", "kafka-tls").items():
            self._write(self.tls / key, value)
        self._write(self.ca / "ca.crt", _data(kubectl, namespace, "configmap", "kafka-ca")["ca.crt"])
        # the ConfigMap kafka-config, with this machine's paths and ports in place of the pod's
        self.config = root / "config"
        self.config.mkdir()
        for name in ("start-kafka.sh", "admin-client.sh", "topics.sh", "access.sh"):
            shutil.copy(MANIFESTS / "kafka" / name, self.config / name)
        self.scratch = root / "scratch"
        self.scratch.mkdir()
        props = (MANIFESTS / "kafka" / "server.properties").read_text()
        for pod, here in {
            "BROKER://:9092": f"BROKER://localhost:{port}",
            "localhost:9093": f"localhost:{controller}",
            "/tmp/kafka-tls/": f"{self.scratch}/kafka-tls/",
            "/etc/kafka-tls/": f"{self.tls}/",
            "/var/lib/kafka/data/kraft": str(root / "data"),
        }.items():
            assert pod in props, pod
            props = props.replace(pod, here)
        (self.config / "server.properties").write_text(props)
        # the image's scripts: the same classes on the local stack's classpath
        self.bin = root / "bin"
        self.bin.mkdir()
        artifacts = build.artifacts()
        (root / "log4j2.properties").write_text(_LOG4J2)
        (root / "tools-log4j2.properties").write_text(TOOLS_LOG4J2)
        for script, main in {**TOOLS, "kafka-server-start.sh": "kafka.Kafka"}.items():
            server = script == "kafka-server-start.sh"
            options = " ".join(versions.KAFKA_JVM_OPTIONS if server else TOOL_JVM_OPTIONS)
            log4j = root / ("log4j2.properties" if server else "tools-log4j2.properties")
            wrapper = self.bin / script
            wrapper.write_text(
                "#!/bin/bash\n"
                f'exec java {options} -Dlog4j2.configurationFile={log4j} -cp "{artifacts.kafka_tools_classpath()}" '
                f'{main} "$@"\n'
            )
            wrapper.chmod(0o755)
        self.env = {
            **os.environ,
            "KAFKA_BIN": str(self.bin),
            "KAFKA_CONFIG_DIR": str(self.config),
            "KAFKA_TLS_DIR": str(self.tls),
            "KAFKA_USERS_DIR": str(self.users),
            "KAFKA_CA_DIR": str(self.ca),
            "KAFKA_SCRATCH_DIR": str(self.scratch),
            "KAFKA_ADVERTISED_HOST": "localhost",
            "KAFKA_PORT": str(port),
            "KAFKA_CLUSTER_ID": "c2FnYS1vcGVyYXRvci1rZg",
            "BOOTSTRAP": self.bootstrap,
            "PARTICIPANTS": " ".join(SERVICES),
        }
        self.record: procs.ProcessRecord | None = None

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)

    def start(self) -> None:
        self.record = procs.spawn(
            "kind-kafka",
            ["bash", str(self.config / "start-kafka.sh")],
            run_dir=self.root,
            env=self.env,
            die_with_parent=True,
        )

    def stop(self) -> None:
        if self.record is not None:
            procs.terminate([self.record], run_dir=self.root)

    def job(self, script: str) -> str:
        done = subprocess.run(
            ["bash", str(self.config / script)], capture_output=True, text=True, env=self.env, timeout=300
        )
        assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def security(self, principal: str) -> dict[str, Any]:
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": (self.users / principal / "username").read_text(),
            "sasl_plain_password": (self.users / principal / "password").read_text(),
            "ssl_context": ssl.create_default_context(cafile=str(self.ca / "ca.crt")),
        }


@pytest.fixture(scope="module")
def kind_broker(
    tmp_path_factory: pytest.TempPathFactory, kubectl: Kubectl, secrets_namespace: str
) -> Iterator[KindBroker]:
    broker = KindBroker(tmp_path_factory.mktemp("kind-kafka"), kubectl, secrets_namespace)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
async def kind_jobs(kind_broker: KindBroker) -> dict[str, str]:
    """The broker up, then the two Jobs' scripts, as `make kind-up` runs them; their output."""
    try:
        await wait_for_broker(kind_broker.bootstrap, timeout_s=120, **kind_broker.security("saga-admin"))
    except Exception:
        log = procs.log_tail(kind_broker.record, lines=60) if kind_broker.record else ""
        raise AssertionError(f"the kind broker did not come up; its log:\n{log}") from None
    return {"topics": kind_broker.job("topics.sh"), "access": kind_broker.job("access.sh")}


async def _produce(broker: KindBroker, principal: str, topic: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, request_timeout_ms=10000, **broker.security(principal)
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}")
    finally:
        await producer.stop()


async def _consume(broker: KindBroker, principal: str, topic: str, group: str) -> int:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        request_timeout_ms=10000,
        **broker.security(principal),
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        return sum(len(m) for m in batches.values())
    finally:
        await consumer.stop()


async def test_the_jobs_create_the_topics_and_grant_the_acls(kind_jobs: dict[str, str]) -> None:
    listed = set(kind_jobs["topics"].split())
    for participant in SERVICES:
        assert {
            f"saga.commands.{participant}",
            f"saga.commands.{participant}.dlq",
            f"saga.replies.{participant}",
        } <= listed
    assert "saga.replies.dlq" in listed
    acls = kind_jobs["access"]
    print(acls)  # the broker's own account of every ACL (pytest -s shows it)
    assert "(principal=User:saga-operator, host=*, operation=WRITE, permissionType=ALLOW)" in acls
    assert "ResourcePattern(resourceType=TOPIC, name=saga.commands., patternType=PREFIXED)" in acls
    assert "ResourcePattern(resourceType=TOPIC, name=saga.replies., patternType=PREFIXED)" in acls
    # nobody holds a cluster ACL: only the admin (a super user) creates topics
    assert "resourceType=CLUSTER" not in acls


async def test_every_principal_does_its_part_and_nothing_else(
    kind_broker: KindBroker, kind_jobs: dict[str, str]
) -> None:
    b = kind_broker
    await _produce(b, "saga-operator", "saga.commands.videos")
    assert await _consume(b, "saga-participant-videos", "saga.commands.videos", "saga-participant-videos") >= 1
    await _produce(b, "saga-participant-videos", "saga.replies.videos")
    await _produce(b, "saga-participant-videos", "saga.commands.videos.dlq")
    assert await _consume(b, "saga-operator", "saga.replies.videos", "saga-operator") >= 1
    await _produce(b, "saga-operator", "saga.replies.dlq")

    # a participant cannot forge a command, nor another participant's reply, nor read another's commands
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(b, "saga-participant-videos", "saga.commands.users")
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(b, "saga-participant-videos", "saga.replies.users")
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume(b, "saga-participant-videos", "saga.commands.users", "saga-participant-videos")
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume(b, "saga-participant-videos", "saga.commands.videos", "saga-participant-users")
    # the operator cannot forge a reply
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(b, "saga-operator", "saga.replies.videos")
    # nobody but the admin creates a topic
    for principal in ("saga-operator", "saga-participant-videos"):
        with pytest.raises(TopicAuthorizationFailedError):
            await ensure_topics(b.bootstrap, ["saga.commands.new"], **b.security(principal))
    # and there is no way in without a password
    with pytest.raises(KafkaConnectionError):
        await _produce_anonymous(b)


async def _produce_anonymous(broker: KindBroker) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
    await producer.start()
    await producer.stop()


def test_the_broker_mounts_the_secrets_the_script_makes() -> None:
    """The manifests and kind/kafka-secrets.sh agree on the Secrets' names; none is in the manifests."""
    docs = objects("kafka")
    assert not [d for d in docs if d["kind"] == "Secret"]
    script = (REPO / "kind" / "kafka-secrets.sh").read_text()
    referenced: set[str] = set()
    for workload in ("kafka-topics", "kafka-access"):
        spec = find(docs, "Job", workload)["spec"]["template"]["spec"]
        for volume in spec["volumes"]:
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
            for source in volume.get("projected", {}).get("sources", []):
                referenced.add(source["secret"]["name"])
    spec = find(docs, "StatefulSet", "kafka")["spec"]["template"]["spec"]
    referenced |= {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert referenced == {"kafka-tls", *[f"kafka-user-{p}" for p in PRINCIPALS]}
    assert "kafka-tls" in script and "kafka-user-$principal" in script
    assert (
        "for principal in saga-admin saga-broker saga-operator $(printf 'saga-participant-%s ' $PARTICIPANTS)" in script
    )
    assert "PARTICIPANTS=${PARTICIPANTS:-" + " ".join(SERVICES) + "}" in script
