"""The harness's Saga manifests are Sagas the operator accepts: its CRD's apiVersion and kind, a spec its
model validates (the harness writes the names a user writes rather than importing the operator's)."""

from __future__ import annotations

from saga_harness.bench.shared import saga_manifest
from saga_harness.manifests import API_VERSION, KIND, buy_video_saga
from saga_operator.domain import model


def test_the_crd_names_are_the_operators() -> None:
    assert API_VERSION == f"{model.GROUP}/{model.VERSION}"
    assert KIND == model.KIND


def test_the_manifests_validate_against_the_operators_model() -> None:
    purchase = {"buyer": "alice", "video": "v-1", "price": 300, "agent": "acme"}
    manifests = [
        buy_video_saga("plain", purchase),
        buy_video_saga("renamed", purchase, participants={"videos": "v", "users": "u", "agents": "a"}, abort=True),
        saga_manifest("bench", ["p1", "p2", "p3"]),
    ]
    for manifest in manifests:
        spec = model.SagaSpec.model_validate(manifest["spec"])
        assert [s.participant for s in spec.steps] == [s["participant"] for s in manifest["spec"]["steps"]]
    assert [s["participant"] for s in manifests[1]["spec"]["steps"]] == ["v", "u", "a"]
