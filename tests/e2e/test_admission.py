"""The admission layer on the real API server: what would break a saga's integrity, or let one namespace
command a participant it may not use, is refused at `kubectl apply` / `patch`, and each refusal is asserted
with the exact words kubectl prints. docs/architecture.md ("The admission layer") says what is refused
where, and what admission cannot refuse.

The policies come from saga_harness.world.install_crd (the generated crds/ files; the status policy
rendered with the harness operator's identity besides the ServiceAccount). No operator watches the
namespaces these tests create: a refused request changes nothing by construction, and the accepted ones
are left alone (their finalizers are removed at the end).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from saga_harness.manifests import buy_video_saga
from saga_harness.world import REPO, install_crd
from saga_operator import admission
from saga_protocol import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH, json_size
from saga_testenv import StackEndpoints

pytestmark = pytest.mark.stack

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
PAYLOAD = {"buyer": "alice", "video": "v-admission", "price": 1500, "agent": "bob-agency"}
ONLY_ABORT = "(only spec.abort, from false to true, and spec.ttlSecondsAfterFinished may change)"
STEPS_FROZEN = f"the steps of a saga cannot change once it is created {ONLY_ABORT}"
PARTICIPANTS = (
    f"ValidatingAdmissionPolicy '{admission.PARTICIPANTS_POLICY}' with binding '{admission.PARTICIPANTS_POLICY}' "
    "denied request"
)
PAYLOAD_POLICY = (
    f"ValidatingAdmissionPolicy '{admission.PAYLOAD_POLICY}' with binding '{admission.PAYLOAD_POLICY}' denied request"
)
STATUS_POLICY = (
    f"ValidatingAdmissionPolicy '{admission.STATUS_WRITERS_POLICY}' with binding "
    f"'{admission.STATUS_WRITERS_POLICY}' denied request"
)


@dataclass(frozen=True)
class Cluster:
    kubectl: Kubectl
    team_a: str  # the restricted participant allows this namespace
    team_b: str  # ...and not this one
    ledger: str  # a Participant allowed in team_a only
    harness_user: str  # who the stack's kubeconfig is: the harness runs its operator as this identity

    def apply(self, manifest: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", *extra, "-f", "-", input=yaml.safe_dump(manifest))

    def created(self, manifest: dict[str, Any]) -> str:
        result = self.apply(manifest)
        assert result.returncode == 0, result.stderr
        return str(manifest["metadata"]["name"])


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"accepted: {result.stdout}"
    return result.stderr.strip()


@pytest.fixture(scope="module")
def cluster(stack: StackEndpoints, kubectl: Kubectl) -> Iterator[Cluster]:
    install_crd(stack)
    suffix = uuid.uuid4().hex[:6]
    team_a, team_b, ledger = f"admission-a-{suffix}", f"admission-b-{suffix}", f"ledger-{suffix}"
    for namespace in (team_a, team_b):
        assert kubectl("create", "namespace", namespace).returncode == 0
    participant = {
        "apiVersion": "saga.dev/v1alpha1",
        "kind": "Participant",
        "metadata": {"name": ledger},
        "spec": {
            "actions": [{"name": "post", "compensation": "unpost"}, {"name": "settle"}],
            "namespaces": [team_a],
        },
    }
    assert kubectl("apply", "-f", "-", input=yaml.safe_dump(participant)).returncode == 0
    whoami = json.loads(kubectl("auth", "whoami", "-o", "json").stdout)
    yield Cluster(kubectl, team_a, team_b, ledger, whoami["status"]["userInfo"]["username"])
    for namespace in (team_a, team_b):
        for saga in kubectl("get", "sagas", "-n", namespace, "-o", "name").stdout.split():
            kubectl("patch", saga, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        kubectl("delete", "namespace", namespace, "--wait=false")
    kubectl("delete", "participant", ledger)


def saga(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    manifest = buy_video_saga(name, PAYLOAD, namespace=namespace)
    manifest["spec"].update(spec)
    return manifest


def ledger_saga(cluster: Cluster, name: str, namespace: str, **last_step: Any) -> dict[str, Any]:
    steps = [
        {"name": "post-entry", "participant": cluster.ledger, "action": "post", "compensation": "unpost"},
        {"name": "settle", "participant": cluster.ledger, "action": "settle", **last_step},
    ]
    return saga(name, namespace, steps=steps)


def one_step(name: str, namespace: str, **fields: Any) -> dict[str, Any]:
    step = {"name": "a", "participant": "users", "action": "debit", "compensation": "refund", **fields}
    return saga(name, namespace, steps=[step])


# ---- the spec is immutable, except abort: false -> true ---------------------------------------------


def test_renaming_a_step_of_a_created_saga_is_refused(cluster: Cluster) -> None:
    name = cluster.created(saga("rename", cluster.team_a))
    patch = '[{"op": "replace", "path": "/spec/steps/1/name", "value": "debit"}]'
    result = cluster.kubectl("patch", "saga", name, "-n", cluster.team_a, "--type=json", "-p", patch)
    assert refusal(result) == (
        f'The Saga "{name}" is invalid: spec.steps: Forbidden: {STEPS_FROZEN}: step debit-buyer was renamed, '
        "edited or removed"
    )


def test_removing_or_adding_a_step_is_refused(cluster: Cluster) -> None:
    name = cluster.created(saga("remove", cluster.team_a))
    removed = cluster.kubectl(
        "patch", "saga", name, "-n", cluster.team_a, "--type=json", "-p", '[{"op": "remove", "path": "/spec/steps/2"}]'
    )
    assert refusal(removed) == (
        f'The Saga "{name}" is invalid: spec.steps: Forbidden: {STEPS_FROZEN}: step credit-agent was renamed, '
        "edited or removed"
    )
    extra = json.dumps(
        [{"op": "add", "path": "/spec/steps/-", "value": {"name": "x", "participant": "users", "action": "debit"}}]
    )
    added = cluster.kubectl("patch", "saga", name, "-n", cluster.team_a, "--type=json", "-p", extra)
    assert refusal(added) == f'The Saga "{name}" is invalid: spec.steps: Forbidden: {STEPS_FROZEN}: steps were added'


def test_editing_the_payload_is_refused_at_kubectl_apply(cluster: Cluster) -> None:
    manifest = saga("payload", cluster.team_a)
    name = cluster.created(manifest)
    manifest["spec"]["payload"]["price"] = 1
    assert refusal(cluster.apply(manifest)) == (
        f'The Saga "{name}" is invalid: spec.payload: Forbidden: spec.payload cannot change once the saga is '
        f"created {ONLY_ABORT}"
    )


def test_any_other_spec_field_is_immutable_too(cluster: Cluster) -> None:
    name = cluster.created(saga("limit", cluster.team_a))
    result = cluster.kubectl(
        "patch", "saga", name, "-n", cluster.team_a, "--type=merge", "-p", '{"spec":{"compensationAttemptLimit":3}}'
    )
    assert refusal(result) == (
        f'The Saga "{name}" is invalid: spec.compensationAttemptLimit: Forbidden: spec.compensationAttemptLimit '
        f"cannot change once the saga is created {ONLY_ABORT}"
    )


def test_abort_may_go_from_false_to_true_and_never_back(cluster: Cluster) -> None:
    name = cluster.created(saga("abort", cluster.team_a))
    ns = cluster.team_a
    aborted = cluster.kubectl("patch", "saga", name, "-n", ns, "--type=merge", "-p", '{"spec":{"abort":true}}')
    assert aborted.returncode == 0, aborted.stderr
    assert aborted.stdout.strip() == f"saga.saga.dev/{name} patched"
    expected = (
        f'The Saga "{name}" is invalid: spec.abort: Forbidden: spec.abort cannot go back to false: an abort, once '
        "asked for, cannot be withdrawn"
    )
    back = cluster.kubectl("patch", "saga", name, "-n", ns, "--type=merge", "-p", '{"spec":{"abort":false}}')
    assert refusal(back) == expected
    # removing the field would default it back to false: the same refusal
    removed = cluster.kubectl(
        "patch", "saga", name, "-n", ns, "--type=json", "-p", '[{"op":"remove","path":"/spec/abort"}]'
    )
    assert refusal(removed) == expected
    # metadata stays writable (labels, the operator's finalizer)
    assert cluster.kubectl("label", "saga", name, "-n", ns, "team=a").returncode == 0


# ---- only the operator writes the saga log ----------------------------------------------------------


@pytest.fixture(scope="module")
def status_writers(cluster: Cluster) -> Cluster:
    """RBAC for the identities these tests impersonate, so that only the policy can refuse them: jane may
    read and patch Saga status in team_a (as a namespace's edit role often allows), and so may the
    operator's ServiceAccount (its own role grants the patch; `kubectl patch` reads the object first)."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "saga-status-editor", "namespace": cluster.team_a},
        "rules": [{"apiGroups": ["saga.dev"], "resources": ["sagas", "sagas/status"], "verbs": ["get", "patch"]}],
    }
    namespace, account = admission.OPERATOR_USER.split(":")[2:]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "saga-status-editors", "namespace": cluster.team_a},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "saga-status-editor"},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"},
            {"kind": "ServiceAccount", "name": account, "namespace": namespace},
        ],
    }
    listing = {"apiVersion": "v1", "kind": "List", "items": [role, binding]}
    result = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(listing))
    assert result.returncode == 0, result.stderr
    return cluster


def patch_status(cluster: Cluster, name: str, message: str, *identity: str) -> subprocess.CompletedProcess[str]:
    body = json.dumps({"status": {"message": message}})
    return cluster.kubectl(
        *identity, "patch", "saga", name, "-n", cluster.team_a, "--subresource=status", "--type=merge", "-p", body
    )


def test_a_status_patch_by_anyone_but_the_operator_is_refused(status_writers: Cluster) -> None:
    cluster = status_writers
    name = cluster.created(saga("status", cluster.team_a))
    deadline = time.monotonic() + 15  # the policy is read by an informer: it may take a moment after install
    while (result := patch_status(cluster, name, "jane was here", "--as=jane")).returncode == 0:
        assert time.monotonic() < deadline, "the status policy never refused jane"
        time.sleep(0.5)
    allowed = f"user {admission.OPERATOR_USER} or user {cluster.harness_user} or group {admission.STATUS_WRITERS_GROUP}"
    assert refusal(result) == (
        f'Error from server (Forbidden): sagas.saga.dev "{name}" is forbidden: {STATUS_POLICY}: the status of a '
        f"Saga is the saga log: only saga-operator writes it ({allowed}), not jane; break-glass: docs/operations.md"
    )
    stored = json.loads(cluster.kubectl("get", "saga", name, "-n", cluster.team_a, "-o", "json").stdout)
    assert (stored.get("status") or {}).get("message") != "jane was here"


@pytest.mark.parametrize(
    ("who", "identity"),
    [
        ("the operator's ServiceAccount", (f"--as={admission.OPERATOR_USER}",)),
        (
            "a person in the break-glass group",
            ("--as=oncall@example.com", f"--as-group={admission.STATUS_WRITERS_GROUP}"),
        ),
        ("the harness operator's identity", ()),
    ],
)
def test_the_operator_and_the_break_glass_group_may_write_the_status(
    status_writers: Cluster, who: str, identity: tuple[str, ...]
) -> None:
    cluster = status_writers
    name = cluster.created(saga("writer", cluster.team_a))
    result = patch_status(cluster, name, f"written by {who}", *identity)
    assert result.returncode == 0, f"{who}: {result.stderr}"
    stored = json.loads(cluster.kubectl("get", "saga", name, "-n", cluster.team_a, "-o", "json").stdout)
    assert stored["status"]["message"] == f"written by {who}"


# ---- which namespace may command which participant -------------------------------------------------


def test_an_action_the_participant_does_not_declare_is_refused(cluster: Cluster) -> None:
    manifest = saga("undeclared", cluster.team_b)
    manifest["spec"]["steps"][1]["action"] = "withdraw"
    assert refusal(cluster.apply(manifest)) == (
        f'The sagas "undeclared" is invalid: : {PARTICIPANTS}: step debit-buyer: participant users has no action '
        "withdraw (it serves: debit)"
    )


def test_a_compensation_other_than_the_declared_one_is_refused(cluster: Cluster) -> None:
    manifest = saga("other-compensation", cluster.team_b)
    manifest["spec"]["steps"][1]["compensation"] = "credit-back"
    assert refusal(cluster.apply(manifest)) == (
        f'The sagas "other-compensation" is invalid: : {PARTICIPANTS}: step debit-buyer: participant users undoes '
        "debit with refund, not credit-back"
    )


def test_a_namespace_the_participant_does_not_allow_is_refused(cluster: Cluster) -> None:
    refused = cluster.apply(ledger_saga(cluster, "wrong-team", cluster.team_b))
    assert refusal(refused) == (
        f'Error from server (Forbidden): error when creating "STDIN": sagas.saga.dev "wrong-team" is forbidden: '
        f"{PARTICIPANTS}: step post-entry: participant {cluster.ledger} does not take commands from namespace "
        f"{cluster.team_b} (it allows: {cluster.team_a})"
    )
    allowed = cluster.apply(ledger_saga(cluster, "right-team", cluster.team_a), "--dry-run=server")
    assert allowed.returncode == 0, allowed.stderr


def test_an_action_without_compensation_runs_only_as_the_pivot(cluster: Cluster) -> None:
    undone = cluster.apply(ledger_saga(cluster, "undo-settle", cluster.team_a, compensation="unsettle"))
    assert refusal(undone) == (
        f'The sagas "undo-settle" is invalid: : {PARTICIPANTS}: step settle: participant {cluster.ledger} cannot '
        "undo settle: only the last step (the pivot) may run it, without a compensation"
    )
    pivot = cluster.apply(ledger_saga(cluster, "pivot-settle", cluster.team_a), "--dry-run=server")
    assert pivot.returncode == 0, pivot.stderr


def test_the_examples_are_admitted_in_any_namespace_by_the_demo_participants(cluster: Cluster) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", cluster.team_b, "-f", str(REPO / "examples"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == 3


def test_a_participant_with_no_participant_object_is_not_refused_at_admission(cluster: Cluster) -> None:
    """The limit of a policy evaluated once per Participant: for a name no Participant has, nothing is
    evaluated. The operator refuses such a saga at start (docs/architecture.md)."""
    manifest = one_step("unregistered", cluster.team_b, participant=f"nobody-{cluster.ledger}")
    result = cluster.apply(manifest, "--dry-run=server")
    assert result.returncode == 0, result.stderr


def test_participant_objects_are_checked_too(cluster: Cluster) -> None:
    bad = {
        "apiVersion": "saga.dev/v1alpha1",
        "kind": "Participant",
        "metadata": {"name": "not.a.label"},
        "spec": {"actions": [{"name": "a"}, {"name": "a"}], "namespaces": ["*", cluster.team_a]},
    }
    assert refusal(cluster.apply(bad, "--dry-run=server")) == (
        'The Participant "not.a.label" is invalid: \n'
        '* spec.actions[1]: Duplicate value: {"name":"a"}\n'
        "* <nil>: Invalid value: a participant's name is a DNS label (lower case letters, digits and '-', at most "
        "63): the name its Saga steps give in `participant`\n"
        "* spec.namespaces: Invalid value: '*' allows every namespace: list it alone"
    )
    listed = cluster.kubectl("get", "participants", "users", cluster.ledger)
    header, users, ledger = listed.stdout.splitlines()
    assert header.split() == ["NAME", "NAMESPACES", "ACTIONS", "AGE"]
    assert users.split()[:3] == ["users", '["*"]', '[{"compensation":"refund","name":"debit"}]']
    assert ledger.split()[:3] == [
        cluster.ledger,
        f'["{cluster.team_a}"]',
        '[{"compensation":"unpost","name":"post"},{"name":"settle"}]',
    ]


# ---- sizes and shapes the wire refuses ---------------------------------------------------------------


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def test_a_payload_larger_than_the_wire_carries_is_refused_at_the_byte(cluster: Cluster) -> None:
    fits = {"note": ""}
    fits["note"] = "x" * (MAX_PAYLOAD_BYTES - json_size(fits))
    assert json_size(fits) == MAX_PAYLOAD_BYTES
    accepted = cluster.apply(saga("payload-fits", cluster.team_b, payload=fits), "--dry-run=server")
    assert accepted.returncode == 0, accepted.stderr
    over = {"note": fits["note"] + "é"}  # two more bytes in UTF-8
    assert refusal(cluster.apply(saga("payload-over", cluster.team_b, payload=over))) == (
        'Error from server (RequestEntityTooLarge): error when creating "STDIN": sagas.saga.dev "payload-over" is '
        f"forbidden: {PAYLOAD_POLICY}: spec.payload is {json_size(over)} bytes as compact JSON, more than the saga "
        f"protocol carries ({MAX_PAYLOAD_BYTES})"
    )


@pytest.mark.parametrize("leaf", [1, "a string with [brackets] and {braces"], ids=["plain", "brackets-in-strings"])
def test_a_payload_nested_deeper_than_the_wire_allows_is_refused(cluster: Cluster, leaf: Any) -> None:
    limit = MAX_PAYLOAD_DEPTH
    deepest = saga("payload-deepest", cluster.team_b, payload=nested(limit, leaf))  # {"a": ...} x 32: 32 levels
    accepted = cluster.apply(deepest, "--dry-run=server")
    assert accepted.returncode == 0, accepted.stderr
    too_deep = saga("payload-too-deep", cluster.team_b, payload=nested(limit, [leaf]))  # 33 levels
    assert refusal(cluster.apply(too_deep)) == (
        f'The sagas "payload-too-deep" is invalid: : {PAYLOAD_POLICY}: spec.payload is nested deeper than the saga '
        f"protocol allows ({limit} levels, the payload object itself is level 1)"
    )


def test_a_null_payload_is_refused(cluster: Cluster) -> None:
    """At `kubectl create`. `kubectl apply` drops a null before it sends anything (null means "remove the
    field" to apply), so there `payload: null` is no payload at all: an empty object."""
    manifest = yaml.safe_dump(saga("payload-null", cluster.team_b, payload=None))
    assert refusal(cluster.kubectl("create", "-f", "-", input=manifest)) == (
        f'The sagas "payload-null" is invalid: : {PAYLOAD_POLICY}: spec.payload is null: give an object, or leave '
        "the field out for an empty one"
    )


def test_a_backoff_longer_than_its_maximum_is_refused_naming_the_step(cluster: Cluster) -> None:
    manifest = one_step("backoff", cluster.team_b, retry={"backoffSeconds": 10, "maxBackoffSeconds": 5})
    assert refusal(cluster.apply(manifest)) == (
        'The Saga "backoff" is invalid: spec.steps[0]: Invalid value: step a: retry.backoffSeconds must '
        "not exceed retry.maxBackoffSeconds"
    )


def test_depends_on_twice_the_same_step_or_a_later_one_is_refused_naming_the_step(cluster: Cluster) -> None:
    first = {"name": "a", "participant": "users", "action": "debit", "compensation": "refund"}
    twice = saga("depends-twice", cluster.team_b, steps=[first, {**first, "name": "b", "dependsOn": ["a", "a"]}])
    assert refusal(cluster.apply(twice)) == (
        'The Saga "depends-twice" is invalid: spec.steps[1]: Invalid value: step b: dependsOn names a more than once'
    )
    later = saga("depends-later", cluster.team_b, steps=[{**first, "dependsOn": ["b"]}, {**first, "name": "b"}])
    assert refusal(cluster.apply(later)) == (
        'The Saga "depends-later" is invalid: spec: Invalid value: step a: dependsOn names b, which is not a step '
        "listed before it (each dependsOn entry must name another step of this saga, listed before it)"
    )


def test_depends_on_an_unknown_step_or_in_a_cycle_is_refused_naming_the_step_and_the_entry(cluster: Cluster) -> None:
    """A cycle cannot be written: every entry must name a step listed before, so one of the cycle's steps names a
    later one, and that is the step the message names."""
    first = {"name": "a", "participant": "users", "action": "debit", "compensation": "refund"}
    unknown = saga("depends-unknown", cluster.team_b, steps=[first, {**first, "name": "charge", "dependsOn": ["x"]}])
    assert refusal(cluster.apply(unknown)) == (
        'The Saga "depends-unknown" is invalid: spec: Invalid value: step charge: dependsOn names x, which is not a '
        "step listed before it (each dependsOn entry must name another step of this saga, listed before it)"
    )
    cycle = saga(
        "depends-cycle",
        cluster.team_b,
        steps=[{**first, "dependsOn": ["b"]}, {**first, "name": "b", "dependsOn": ["a"]}],
    )
    assert refusal(cluster.apply(cycle)) == (
        'The Saga "depends-cycle" is invalid: spec: Invalid value: step a: dependsOn names b, which is not a step '
        "listed before it (each dependsOn entry must name another step of this saga, listed before it)"
    )
    itself = saga("depends-itself", cluster.team_b, steps=[first, {**first, "name": "b", "dependsOn": ["b"]}])
    assert "step b: dependsOn names b, which is not a step listed before it" in refusal(cluster.apply(itself))


def test_duplicate_step_names_and_a_pivot_before_the_end_are_refused_naming_the_step(cluster: Cluster) -> None:
    first = {"name": "a", "participant": "users", "action": "debit", "compensation": "refund"}
    twice = saga("names-twice", cluster.team_b, steps=[first, {**first, "name": "b"}, {**first}])
    assert refusal(cluster.apply(twice)) == (
        'The Saga "names-twice" is invalid: spec.steps: Invalid value: step a: another step has the same '
        "name (step names must be unique)"
    )
    no_compensation = {k: v for k, v in first.items() if k != "compensation"}
    early = saga("pivot-early", cluster.team_b, steps=[first, {**no_compensation, "name": "b"}, {**first, "name": "c"}])
    assert refusal(cluster.apply(early)) == (
        'The Saga "pivot-early" is invalid: spec.steps: Invalid value: step b: no compensation, but only '
        "the last step (the pivot) may have no compensation"
    )


def test_kubectl_explain_states_defaults_ranges_and_the_pivot_rule(cluster: Cluster) -> None:
    explained = cluster.kubectl("explain", "saga.spec.steps")
    assert explained.returncode == 0, explained.stderr
    text = " ".join(explained.stdout.split())
    print(f"\n$ kubectl explain saga.spec.steps\n{explained.stdout}")
    assert (
        "it is then the pivot, the step after which the saga can no longer be undone, and it runs after every "
        "other step has succeeded" in text
    )
    assert "timeoutSeconds <integer> How long to wait" in text
    assert "Default: 30. Range: 1 to 86400." in text
    retry = " ".join(cluster.kubectl("explain", "saga.spec.steps.retry").stdout.split())
    assert "Default: 3. Range: 0 to 100." in retry and "Default: 60. Range: 0 to 86400." in retry
    ttl = " ".join(cluster.kubectl("explain", "saga.spec.ttlSecondsAfterFinished").stdout.split())
    assert "Failed and Rejected sagas are never deleted by it" in ttl and "Range: 0 to 31622400." in ttl


def test_depends_on_an_empty_list_means_no_prerequisite(cluster: Cluster) -> None:
    first = {"name": "a", "participant": "users", "action": "debit", "compensation": "refund"}
    manifest = saga("depends-nothing", cluster.team_b, steps=[first, {**first, "name": "b", "dependsOn": []}])
    result = cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(manifest))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["steps"][1]["dependsOn"] == []
