"""The role is sufficient: the operator, authenticated as its ServiceAccount (a token from the
TokenRequest API, `kubectl create token`, not the admin certificate), runs the three example sagas
from examples/ and the templated one of examples/templates/ to the end they are meant to reach, and writes the
template's usage status.

The operator and the participants run as local processes (saga_harness.world), as in the other
end-to-end tests; only the operator's kubeconfig differs. Its own reply topic and consumer group keep
it apart from other operators sharing the broker. Runs before tests/e2e (alphabetical order), so the
session's admin operator of tests/e2e, which watches every namespace, is not running yet.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga_harness.world import SagaWorld
from saga_testenv import StackEndpoints

from .helpers import EXAMPLES, NAMESPACE, OPERATOR_SA, OPERATOR_USER, Kubectl, ok

pytestmark = pytest.mark.stack

EXPECTED = {
    "buy-video-succeeds": "Succeeded",
    "buy-video-fails-at-debit": "Compensated",
    "buy-video-fails-at-agent": "Compensated",
}


@pytest.fixture
def operator_kubeconfig(stack: StackEndpoints, kubectl: Kubectl, operator_identity: None, tmp_path: Path) -> Path:
    token = ok(
        kubectl("create", "token", OPERATOR_SA, "-n", NAMESPACE, "--duration=1h"), "kubectl create token"
    ).strip()
    path = stack.token_kubeconfig(token, tmp_path / "operator.kubeconfig", user=OPERATOR_SA)
    whoami = json.loads(ok(kubectl("auth", "whoami", "-o", "json", kubeconfig=path), "kubectl auth whoami"))
    assert whoami["status"]["userInfo"]["username"] == OPERATOR_USER
    return path


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"deploy-e2e-{uuid.uuid4().hex[:6]}"
    ok(kubectl("create", "namespace", name), "creating the test namespace")
    yield name
    # After a failed run the operator may not have released its finalizers: release them here, or the
    # namespace stays Terminating and a later operator finds these Sagas.
    for saga in kubectl("get", "sagas", "-n", name, "-o", "name").stdout.split():
        kubectl("patch", saga, "-n", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    kubectl("delete", "namespace", name, "--wait=false")


@contextlib.contextmanager
def sagas_removed_before_stop(kubectl: Kubectl, namespace: str) -> Iterator[None]:
    """Delete the Sagas while the operator still runs: it removes its finalizer from each."""
    try:
        yield
    finally:
        kubectl("delete", "sagas", "--all", "-n", namespace, "--timeout=60s")


def test_examples_run_with_the_operator_authenticated_as_its_serviceaccount(
    stack: StackEndpoints,
    kubectl: Kubectl,
    operator_kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    world = SagaWorld(
        stack, tmp_path / "world", operator_env={"KUBECONFIG": str(operator_kubeconfig), "SAGA_NAMESPACE": namespace}
    )
    with world, sagas_removed_before_stop(kubectl, namespace):
        assert world.operator.env["KUBECONFIG"] == str(operator_kubeconfig)
        ok(kubectl("apply", "-n", namespace, "-f", str(EXAMPLES)), "kubectl apply -f examples/")
        done = world.wait_terminal(EXPECTED, namespace=namespace, timeout=120)
        phases = {name: body["status"]["phase"] for name, body in done.items()}
        assert phases == EXPECTED, world.operator.log_tail()

        # the Events are the operator's, created with the ServiceAccount's token
        for name, phase in EXPECTED.items():
            reasons = {e["reason"] for e in world.events(name, namespace)}
            assert phase in reasons, f"{name}: events {sorted(reasons)}"
        # the books agree: one purchase paid and credited, everything else undone
        ledger = world.ledger()
        assert ledger["consistent"] and ledger["completedSagas"] == 1

        # A saga of a template, and the template's usage status (sagatemplates/status) written by this identity.
        for example in ("buy-video.yaml", "buy-video-from-template.yaml"):  # the template first
            ok(kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "templates" / example)), f"applying {example}")
        templated = world.wait_terminal(["buy-video-from-template"], namespace=namespace, timeout=120)
        assert templated["buy-video-from-template"]["status"]["phase"] == "Succeeded", world.operator.log_tail()
        deadline = time.monotonic() + 30
        while True:
            stored = json.loads(ok(kubectl("get", "sagatemplate", "buy-video", "-n", namespace, "-o", "json"), "get"))
            usage = stored.get("status") or {}
            if (usage.get("sagas"), usage.get("running")) == (1, 0):
                break
            assert time.monotonic() < deadline, f"usage status: {usage}\n{world.operator.log_tail()}"
            time.sleep(0.2)

        assert world.operator.record is not None
        log = Path(world.operator.record.log).read_text()
        for name, phase in EXPECTED.items():
            assert f"saga {namespace}/{name}: {phase}" in log, f"this operator did not finish {name}"
        # The only refusal allowed: Kopf's watch of CRDs (deliberately not granted; Kopf falls back to
        # the scan it did at start-up). Gone altogether once the operator sets
        # settings.scanning.disabled (see docs/kind.md).
        forbidden = [
            line for line in log.splitlines() if "Forbidden" in line and "customresourcedefinitions" not in line
        ]
        assert forbidden == [], "\n".join(forbidden)
