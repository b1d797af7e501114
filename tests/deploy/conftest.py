"""Fixtures for the deployment tests: the pieces a server-side dry run or an authorization check needs,
installed for real on the stack's API server."""

from __future__ import annotations

import pytest

from saga_harness.world import install_crd
from saga_testenv import StackEndpoints

from .helpers import MANIFESTS, Kubectl, apply_docs, objects, ok


@pytest.fixture(scope="session")
def saga_crd(stack: StackEndpoints) -> None:
    """The Saga and Participant CRDs from the kustomize copies in manifests/base (what the deploy tests
    check), without any admission policy (the dry runs check those)."""
    crds = MANIFESTS / "base" / "crds"
    install_crd(
        stack,
        crd=crds / "saga.dev_sagas.yaml",
        participants=crds / "saga.dev_participants.yaml",
        templates=crds / "saga.dev_sagatemplates.yaml",
        policy=None,
        admission=False,
    )


@pytest.fixture(scope="session")
def operator_identity(stack: StackEndpoints, kubectl: Kubectl) -> None:
    """The operator's namespace, ServiceAccount, ClusterRole and ClusterRoleBinding from manifests/base,
    applied for real. Not the Deployment: on a cluster with a kubelet it would try to pull the image."""
    wanted = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    docs = [d for d in objects("base") if d["kind"] in wanted]
    assert {d["kind"] for d in docs} == wanted
    ok(apply_docs(kubectl, docs), "applying the operator's namespace and RBAC")
