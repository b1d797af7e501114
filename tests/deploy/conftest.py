"""Fixtures for the deployment tests: the pieces a server-side dry run or an authorization check needs,
installed for real on the stack's API server."""

from __future__ import annotations

import pytest

from saga_localstack import StackEndpoints

from .helpers import Kubectl, apply_docs, install_crd, objects, ok


@pytest.fixture(scope="session")
def saga_crd(stack: StackEndpoints, kubectl: Kubectl) -> None:
    install_crd(kubectl)


@pytest.fixture(scope="session")
def operator_identity(stack: StackEndpoints, kubectl: Kubectl) -> None:
    """The operator's namespace, ServiceAccount, ClusterRole and ClusterRoleBinding from manifests/base,
    applied for real. Not the Deployment: on a cluster with a kubelet it would try to pull the image."""
    wanted = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    docs = [d for d in objects("base") if d["kind"] in wanted]
    assert {d["kind"] for d in docs} == wanted
    ok(apply_docs(kubectl, docs), "applying the operator's namespace and RBAC")
