"""Every manifest sent to the real API server with `kubectl apply --dry-run=server`: schema, defaulting,
validation, CEL rules and admission (PodSecurity `restricted` on saga-system) all run; nothing is stored.

The CRDs and the namespace are applied for real first: dry runs of Sagas and Participants need their
CRDs served, and the namespace's Pod Security labels are what admission checks the pods against. The
validating admission policies are only dry-run here (applying them would refuse the status writes of an
operator that runs as someone else); tests/e2e/test_admission.py installs them and checks what they do.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from saga_harness.world import serves_mutating_admission_policies
from saga_testenv import StackEndpoints

from .helpers import (
    EXAMPLES,
    KUSTOMIZATIONS,
    MANIFESTS,
    NAMESPACE,
    Kubectl,
    apply_docs,
    kustomize,
    objects,
    ok,
    workloads,
)

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def cluster(stack: StackEndpoints, kubectl: Kubectl, saga_crd: None) -> Kubectl:
    ok(kubectl("apply", "-f", str(MANIFESTS / "base" / "namespace.yaml")), "creating the namespace")
    return kubectl


def no_warnings(stderr: str) -> list[str]:
    # kubectl's own note about objects created by `kubectl create` (no last-applied annotation) is noise
    return [
        line for line in stderr.splitlines() if line.startswith("Warning:") and "last-applied-configuration" not in line
    ]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_passes_server_dry_run(stack: StackEndpoints, cluster: Kubectl, path: str) -> None:
    if path == "admission/finalizer" and not serves_mutating_admission_policies(stack):
        pytest.skip("this cluster serves no MutatingAdmissionPolicy v1 (Kubernetes < 1.36): make kind-up skips it too")
    result = cluster("apply", "--dry-run=server", "-f", "-", input=kustomize(path))
    out = ok(result, f"kubectl apply --dry-run=server -k manifests/{path}")
    assert no_warnings(result.stderr) == [], result.stderr  # e.g. "would violate PodSecurity"
    built = objects(path)
    assert len([line for line in out.splitlines() if line.endswith("(server dry run)")]) == len(built)


def test_apply_k_passes_server_dry_run(cluster: Kubectl) -> None:
    """Exactly the command `make kind-up` runs, with -k instead of a pre-built file."""
    ok(
        cluster("apply", "--dry-run=server", "-k", str(MANIFESTS / "overlays" / "kind")),
        "kubectl apply --dry-run=server -k manifests/overlays/kind",
    )


def as_pod(workload: dict[str, Any]) -> dict[str, Any]:
    """The Pod a workload controller would create (no controllers run pods on the local stack)."""
    template = copy.deepcopy(workload["spec"]["template"])
    spec = template["spec"]
    for claim in workload["spec"].get("volumeClaimTemplates", []):
        name = claim["metadata"]["name"]
        spec.setdefault("volumes", []).append({"name": name, "persistentVolumeClaim": {"claimName": name}})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{workload['metadata']['name']}-dry-run",
            "namespace": workload["metadata"]["namespace"],
            "labels": template["metadata"].get("labels", {}),
        },
        "spec": spec,
    }


def test_pods_are_admitted_by_pod_security_restricted(cluster: Kubectl) -> None:
    pods = [as_pod(w) for w in workloads(objects("overlays/kind"))]
    assert len(pods) == 7  # operator, kafka, topics and access jobs, three participants
    result = apply_docs(cluster, pods, "--dry-run=server")
    ok(result, "dry-run of the workloads' pods")
    assert no_warnings(result.stderr) == []


def test_pod_security_is_enforced_on_the_namespace(cluster: Kubectl) -> None:
    """The test above would prove nothing if the namespace admitted anything."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "not-hardened", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    result = cluster("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod))
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted' in result.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_passes_server_dry_run(cluster: Kubectl, name: str) -> None:
    result = cluster("apply", "--dry-run=server", "-n", "default", "-f", str(EXAMPLES / name))
    out = ok(result, f"kubectl apply --dry-run=server -f examples/{name}")
    assert "saga.saga.dev/" in out
    assert no_warnings(result.stderr) == []
