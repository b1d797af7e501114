"""Bad manifests are refused at `kubectl apply`, with a message a person understands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from saga_harness.world import SagaWorld

pytestmark = pytest.mark.stack


def saga(name: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "saga.dev/v1alpha1",
        "kind": "Saga",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"steps": steps, **spec},
    }


def step(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "participant": "users", "action": "debit", "compensation": "refund", **fields}


INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no-steps", saga("bad-no-steps", []), ["spec.steps", "should have at least 1 items"]),
    (
        "missing-action",
        saga("bad-missing-action", [{"name": "a", "participant": "users"}]),
        ["spec.steps[0].action", "Required value"],
    ),
    ("step-name-not-dns", saga("bad-step-name", [step("Debit_Buyer")]), ["spec.steps[0].name", "should match"]),
    ("duplicate-step-names", saga("bad-duplicates", [step("a"), step("a")]), ["step names must be unique"]),
    (
        "compensation-missing-before-the-end",
        saga("bad-pivot", [step("a", compensation=None), step("b")]),
        ["only the last step (the pivot) may have no compensation"],
    ),
    (
        "timeout-out-of-bounds",
        saga("bad-timeout", [step("a", timeoutSeconds=0)]),
        ["spec.steps[0].timeoutSeconds", "should be greater than or equal to 1"],
    ),
    (
        "retry-limit-out-of-bounds",
        saga("bad-retry", [step("a", retry={"limit": 1000})]),
        ["spec.steps[0].retry.limit", "should be less than or equal to 100"],
    ),
    (
        "depends-on-unknown-step",
        saga("bad-depends", [step("a"), step("b", dependsOn=["zzz"])]),
        ["each dependsOn entry must name another step of this saga"],
    ),
    (
        "too-many-steps",
        saga("bad-too-many", [step(f"s{i}") for i in range(33)]),
        ["spec.steps", "must have at most 32 items"],
    ),
]


def _clean(manifest: dict[str, Any]) -> str:
    for s in manifest["spec"]["steps"]:
        if s.get("compensation", "") is None:
            del s["compensation"]
    return yaml.safe_dump(manifest)


@pytest.mark.parametrize(("case", "manifest", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_refused_with_a_clear_message(
    world: SagaWorld, kubectl: Callable[..., Any], case: str, manifest: dict[str, Any], expected: list[str]
) -> None:
    result = kubectl("apply", "-f", "-", input=_clean(manifest))
    assert result.returncode != 0, f"{case} was accepted"
    for fragment in expected:
        assert fragment in result.stderr, f"{case}: {fragment!r} not in {result.stderr!r}"
    assert kubectl("get", "saga", manifest["metadata"]["name"]).returncode != 0


def test_a_valid_manifest_is_accepted_with_defaults(world: SagaWorld, kubectl: Callable[..., Any]) -> None:
    """A step's own defaults are the operator's (the model's), not stored by the API server: a stored default
    would make `kubectl apply` of the unchanged manifest say `configured` (crd.py, _without_item_defaults).
    The saga-level ones are stored; `kubectl explain` states every default."""
    manifest = saga("good-defaults", [step("a")], abort=True)  # abort: it must not run anywhere
    assert kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest)).returncode == 0
    stored = yaml.safe_load(kubectl("get", "saga", "good-defaults", "-o", "yaml").stdout)
    assert "timeoutSeconds" not in stored["spec"]["steps"][0]
    assert stored["spec"]["compensationAttemptLimit"] == 20
    explained = kubectl("explain", "saga.spec.steps.timeoutSeconds").stdout
    assert "Default: 30" in explained, explained
