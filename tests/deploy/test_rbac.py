"""The operator's role is minimal: the real API server's authorizer, asked with
`kubectl auth can-i --as=system:serviceaccount:saga-system:saga-operator`, grants what the operator
does and nothing else. (That it is also sufficient is tests/deploy/test_operator_as_serviceaccount.py.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .helpers import NAMESPACE, OPERATOR_USER, Kubectl

pytestmark = pytest.mark.stack

CanI = Callable[..., bool]
OTHER_NAMESPACE = "default"  # a namespace the operator does not live in: its Sagas are served all the same


@pytest.fixture(scope="module")
def can_i(kubectl: Kubectl, operator_identity: None) -> CanI:
    def ask(*args: str) -> bool:
        result = kubectl("auth", "can-i", f"--as={OPERATOR_USER}", *args)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {result.stdout}{result.stderr}"
        return answer == "yes"

    return ask


NEEDED = [
    # Kopf's watch and the resume-on-start listing, in every namespace
    ("list", "sagas.saga.dev", "--all-namespaces"),
    ("watch", "sagas.saga.dev", "--all-namespaces"),
    ("get", "sagas.saga.dev", "-n", OTHER_NAMESPACE),
    # finalizers: merge PATCH of the object
    ("patch", "sagas.saga.dev", "-n", OTHER_NAMESPACE),
    # a finished saga past its ttlSecondsAfterFinished
    ("delete", "sagas.saga.dev", "-n", OTHER_NAMESPACE),
    # every transition: merge PATCH of the status subresource
    ("patch", "sagas.saga.dev", "--subresource=status", "-n", OTHER_NAMESPACE),
    # a templated Saga's SagaTemplate, read when it starts
    ("get", "sagatemplates.saga.dev", "-n", OTHER_NAMESPACE),
    ("list", "sagatemplates.saga.dev", "--all-namespaces"),
    ("watch", "sagatemplates.saga.dev", "--all-namespaces"),
    # the usage counts on a SagaTemplate's status (SAGAS, RUNNING)
    ("patch", "sagatemplates.saga.dev", "--subresource=status", "-n", OTHER_NAMESPACE),
    # Events on the Sagas (the coordinator's and Kopf's)
    ("create", "events", "-n", OTHER_NAMESPACE),
    ("create", "events", "-n", NAMESPACE),
]


@pytest.mark.parametrize("request_", NEEDED, ids=lambda r: " ".join(r))
def test_grants_what_the_operator_does(can_i: CanI, request_: tuple[str, ...]) -> None:
    assert can_i(*request_), f"the operator needs: {' '.join(request_)}"


NOT_NEEDED = [
    # secrets, anywhere: the first "no"
    ("get", "secrets", "-n", NAMESPACE),
    ("list", "secrets", "-n", NAMESPACE),
    ("get", "secrets", "-n", OTHER_NAMESPACE),
    ("list", "secrets", "--all-namespaces"),
    ("watch", "secrets", "--all-namespaces"),
    # changing workloads, its own Deployment included
    ("patch", "deployments.apps", "-n", NAMESPACE),
    ("update", "deployments.apps", "-n", NAMESPACE),
    ("create", "deployments.apps", "-n", OTHER_NAMESPACE),
    ("delete", "deployments.apps", "-n", NAMESPACE),
    ("patch", "statefulsets.apps", "-n", NAMESPACE),
    ("create", "pods", "-n", NAMESPACE),
    ("create", "pods", "--subresource=exec", "-n", NAMESPACE),
    ("get", "pods", "-n", NAMESPACE),
    ("get", "configmaps", "-n", NAMESPACE),
    ("create", "serviceaccounts", "--subresource=token", "-n", NAMESPACE),
    # Sagas: users create and change them, never the operator (it deletes only those past their TTL)
    ("create", "sagas.saga.dev", "-n", OTHER_NAMESPACE),
    ("update", "sagas.saga.dev", "-n", OTHER_NAMESPACE),
    ("deletecollection", "sagas.saga.dev", "-n", OTHER_NAMESPACE),
    ("update", "sagas.saga.dev", "--subresource=status", "-n", OTHER_NAMESPACE),
    # SagaTemplates: the tenants' to write; the operator only reads them and PATCHes their status
    ("create", "sagatemplates.saga.dev", "-n", OTHER_NAMESPACE),
    ("patch", "sagatemplates.saga.dev", "-n", OTHER_NAMESPACE),
    ("delete", "sagatemplates.saga.dev", "-n", OTHER_NAMESPACE),
    ("update", "sagatemplates.saga.dev", "-n", OTHER_NAMESPACE),
    ("update", "sagatemplates.saga.dev", "--subresource=status", "-n", OTHER_NAMESPACE),
    # Events: created, never rewritten or removed; not the events.k8s.io API it does not use
    ("patch", "events", "-n", OTHER_NAMESPACE),
    ("delete", "events", "-n", OTHER_NAMESPACE),
    ("list", "events", "--all-namespaces"),
    ("create", "events.events.k8s.io", "-n", OTHER_NAMESPACE),
    # cluster-wide objects
    ("list", "namespaces"),
    ("create", "namespaces"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("get", "nodes"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "-n", NAMESPACE),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "users"),
    ("impersonate", "serviceaccounts", "-n", NAMESPACE),
    ("create", "certificatesigningrequests.certificates.k8s.io"),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    # what Kopf uses only for peering or leader election: not in standalone mode
    ("create", "leases.coordination.k8s.io", "-n", NAMESPACE),
    ("list", "clusterkopfpeerings.kopf.dev"),
    ("patch", "kopfpeerings.kopf.dev", "-n", NAMESPACE),
    # anything at all
    ("*", "*", "--all-namespaces"),
]


@pytest.mark.parametrize("request_", NOT_NEEDED, ids=lambda r: " ".join(r))
def test_refuses_what_the_operator_does_not_do(can_i: CanI, request_: tuple[str, ...]) -> None:
    assert not can_i(*request_), f"the operator must not be able to: {' '.join(request_)}"


#: What every authenticated user may do (system:basic-user): ask the API server about itself.
_SELF_REVIEWS = {
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
    "selfsubjectreviews.authentication.k8s.io",
}


@pytest.mark.parametrize("namespace", [NAMESPACE, OTHER_NAMESPACE])
def test_the_whole_list_of_rules(kubectl: Kubectl, operator_identity: None, namespace: str) -> None:
    """`kubectl auth can-i --list`: the resource rules the authorizer resolves for the identity, in full."""
    result = kubectl("auth", "can-i", "--list", f"--as={OPERATOR_USER}", "-n", namespace)
    assert result.returncode == 0, result.stderr
    rules: dict[str, set[str]] = {}
    for line in result.stdout.splitlines()[1:]:
        if line.startswith(" ") or not line.strip():
            continue  # non-resource URLs (discovery, /healthz, /version): every authenticated user's
        resource = line.split()[0]
        verbs = line[line.rindex("[") + 1 : line.rindex("]")].split()
        rules.setdefault(resource, set()).update(verbs)
    for review in _SELF_REVIEWS:
        assert rules.pop(review, {"create"}) == {"create"}
    assert rules == {
        "sagas.saga.dev": {"get", "list", "watch", "patch", "delete"},
        "sagas.saga.dev/status": {"patch"},
        "sagatemplates.saga.dev": {"get", "list", "watch"},
        "sagatemplates.saga.dev/status": {"patch"},
        "events": {"create"},
    }
