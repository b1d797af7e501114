"""The finalizer that keeps a deleted saga until it is compensated: given at create by the admission
policy (crds/saga.dev_finalizer-policy.yaml), and put back by the operator whenever it is missing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import yaml

from saga_harness.manifests import buy_video_saga
from saga_harness.world import SagaWorld, serves_mutating_admission_policies
from saga_operator.domain.model import FINALIZER

pytestmark = pytest.mark.stack

Names = Callable[[str], str]


def test_a_new_saga_has_the_finalizer_from_its_create_and_the_operator_never_writes_its_metadata(
    world: SagaWorld, saga_name: Names
) -> None:
    if not serves_mutating_admission_policies(world.endpoints):
        pytest.skip("this cluster serves no MutatingAdmissionPolicy v1: the operator adds the finalizer itself")
    manifest = buy_video_saga(
        saga_name("admitted"), {"buyer": "alice", "video": "v-finalizer-1", "price": 100, "agent": "acme-films"}
    )
    created = json.loads(world.kubectl("create", "-f", "-", "-o", "json", input=yaml.safe_dump(manifest)))
    assert created["metadata"].get("finalizers") == [FINALIZER]  # the create's own answer: before any operator
    name = created["metadata"]["name"]
    body = world.wait_terminal([name])[name]
    assert body["status"]["phase"] == "Succeeded"
    body = json.loads(world.kubectl("get", "saga", name, "-o", "json", "--show-managed-fields"))
    # Who wrote what: every write by someone other than kubectl is the operator's, and all of them went
    # to the status subresource (a finalizer PATCH would be an Update of the main resource).
    writers = [(m["manager"], m["operation"], m.get("subresource", "")) for m in body["metadata"]["managedFields"]]
    operator = [w for w in writers if not w[0].startswith("kubectl")]
    assert operator, writers
    assert all(subresource == "status" for _, _, subresource in operator), writers


def test_the_operator_puts_back_a_finalizer_removed_from_a_running_saga(world: SagaWorld, saga_name: Names) -> None:
    payload = {
        "buyer": "alice",
        "video": "v-finalizer-2",
        "price": 100,
        "agent": "acme-films",
        "simulate": {"agents": {"delaySeconds": 4}},
    }
    name = world.apply(buy_video_saga(saga_name("refinalize"), payload, timeout_seconds=20))
    world.kubectl("patch", "saga", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    deadline = time.monotonic() + 20
    while FINALIZER not in (world.get(name)["metadata"].get("finalizers") or []):
        assert time.monotonic() < deadline, "the operator did not put its finalizer back"
        time.sleep(0.2)
    assert world.wait_terminal([name])[name]["status"]["phase"] == "Succeeded"
