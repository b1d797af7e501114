"""What a person sees of a saga, on the real stack: `kubectl wait` on its conditions, `kubectl describe` (step
times, Events in the order they happened), an Event for every action of theirs that changes nothing, and the
deletion of finished sagas after their ttlSecondsAfterFinished (also across an operator restart)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from saga_harness.manifests import buy_video_saga
from saga_harness.world import SagaWorld

pytestmark = pytest.mark.stack

Names = Callable[[str], str]


def poor_buyer(name: str, **spec: Any) -> dict[str, Any]:
    """bob cannot pay: the debit is refused and the recorded purchase is compensated, its compensation slowed
    down by 3 s so that the saga stays Compensating for a while."""
    payload = {
        "buyer": "bob",
        "video": "v-feedback",
        "price": 100_000,
        "agent": "bob-agency",
        "simulate": {"videos": {"delaySeconds": 3, "kinds": ["compensation"]}},
    }
    manifest = buy_video_saga(name, payload)
    manifest["spec"].update(spec)
    return manifest


def buy(name: str, **spec: Any) -> dict[str, Any]:
    # A video of its own: alice cannot buy the same one twice.
    manifest = buy_video_saga(name, {"buyer": "alice", "video": f"v-{name}", "price": 10, "agent": "bob-agency"})
    manifest["spec"].update(spec)
    return manifest


def wait_for(world: SagaWorld, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = world.get(name)
        if (body.get("status") or {}).get("phase") == phase:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{name} never reached {phase}: {json.dumps(world.get(name).get('status'))}")


def conditions(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in body["status"]["conditions"]}


def gone(world: SagaWorld, name: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if world.endpoints.kubectl("get", "saga", name).returncode != 0:
            return True
        time.sleep(0.3)
    return False


def described_events(text: str) -> list[str]:
    """The reasons of the Events section of `kubectl describe`, top to bottom."""
    section = text.split("\nEvents:", 1)[1]
    return re.findall(r"^\s+(?:Normal|Warning)\s+(\w+)", section, re.MULTILINE)


def test_kubectl_wait_for_completed_returns_when_a_compensating_saga_ends(world: SagaWorld, saga_name: Names) -> None:
    name = world.apply(poor_buyer(saga_name("wait")))
    compensating = wait_for(world, name, "Compensating")
    # Succeeded is not False yet: the saga has not ended.
    assert conditions(compensating) == {
        "Completed": ("False", "Compensating"),
        "Succeeded": ("Unknown", "Compensating"),
    }

    began = time.monotonic()
    waited = world.endpoints.kubectl("wait", "--for=condition=Completed", f"saga/{name}", "--timeout=60s")
    took = time.monotonic() - began
    print(f"\n$ kubectl wait --for=condition=Completed saga/{name} --timeout=60s   (saga Compensating)")
    print(waited.stdout.strip(), waited.stderr.strip(), f"[returned after {took:.1f}s]")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == f"saga.saga.dev/{name} condition met"

    body = world.get(name)
    assert body["status"]["phase"] == "Compensated"
    assert conditions(body) == {"Completed": ("True", "Compensated"), "Succeeded": ("False", "Compensated")}
    for condition in body["status"]["conditions"]:
        assert condition["observedGeneration"] == body["metadata"]["generation"]
        assert condition["message"].startswith("step debit-buyer refused: InsufficientFunds: bob has ")
    # ... and Succeeded=False, too, is a condition one may wait for: it holds now.
    failed = world.endpoints.kubectl("wait", "--for=condition=Succeeded=False", f"saga/{name}", "--timeout=5s")
    assert failed.returncode == 0, failed.stderr

    described = world.kubectl("describe", "saga", name)
    print(f"\n$ kubectl describe saga {name}\n{described}")
    assert described_events(described) == ["Started", "StepRefused", "CompensationStarted", "Compensated"]
    record = steps_of(body)["record-purchase"]
    # The action's times and the compensation's, each kept: the compensation's dispatch overwrites nothing.
    assert record["dispatchedAt"] <= record["finishedAt"] <= record["compensationDispatchedAt"]
    assert record["compensationDispatchedAt"] <= record["compensatedAt"]
    assert "Compensation Dispatched At:" in described and "Dispatched At:" in described


def steps_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in body["status"]["steps"]}


def test_an_abort_or_a_retry_that_changes_nothing_is_answered_with_an_event(world: SagaWorld, saga_name: Names) -> None:
    name = world.apply(buy(saga_name("ignored")))
    done = world.wait_terminal([name])[name]
    assert done["status"]["phase"] == "Succeeded"
    world.kubectl("patch", "saga", name, "--type=merge", "-p", '{"spec":{"abort":true}}')
    world.kubectl("annotate", "saga", name, "saga.dev/retry=please")
    deadline = time.monotonic() + 30
    while True:
        answers = {e["reason"]: e for e in world.events(name) if e["reason"] in ("AbortIgnored", "RetryIgnored")}
        if len(answers) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    print("\n" + world.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}"))
    assert answers["AbortIgnored"]["message"] == (
        "spec.abort is true but the saga already finished (Succeeded): there is nothing to abort"
    )
    assert answers["RetryIgnored"]["message"] == (
        "retry annotation 'please' ignored: the saga is Succeeded, and only a Failed saga can be retried"
    )
    body = world.get(name)
    assert body["status"]["phase"] == "Succeeded"
    # The operator has seen the new spec: observedGeneration says so, on the status and on its conditions.
    assert body["metadata"]["generation"] == 2
    assert body["status"]["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in body["status"]["conditions"]} == {2}
    time.sleep(1)  # another reconcile (any watch event) must not answer the same abort twice
    world.kubectl("label", "saga", name, "seen=yes")
    time.sleep(1)
    assert [e["reason"] for e in world.events(name)].count("AbortIgnored") == 1


def test_finished_sagas_are_deleted_after_their_ttl_and_others_are_kept(world: SagaWorld, saga_name: Names) -> None:
    before = world.operator.metric("saga_operator_sagas_deleted_by_ttl_total")
    succeeded = world.apply(buy(saga_name("ttl-ok"), ttlSecondsAfterFinished=2))
    compensated = world.apply(poor_buyer(saga_name("ttl-undone"), ttlSecondsAfterFinished=1))
    kept = world.apply(buy(saga_name("ttl-none")))
    bodies = world.wait_terminal([succeeded, compensated, kept])
    assert [bodies[n]["status"]["phase"] for n in (succeeded, compensated, kept)] == [
        "Succeeded",
        "Compensated",
        "Succeeded",
    ]
    assert gone(world, succeeded) and gone(world, compensated)
    assert world.operator.metric("saga_operator_sagas_deleted_by_ttl_total", phase="Succeeded") >= 1
    assert world.operator.metric("saga_operator_sagas_deleted_by_ttl_total") >= before + 2
    assert world.endpoints.kubectl("get", "saga", kept).returncode == 0  # no TTL, no default: kept

    # The TTL may be set on a finished saga (the spec is otherwise immutable).
    patched = world.endpoints.kubectl(
        "patch", "saga", kept, "--type=merge", "-p", '{"spec":{"ttlSecondsAfterFinished":0}}'
    )
    assert patched.returncode == 0, patched.stderr
    assert gone(world, kept)


def test_a_ttl_that_passed_while_the_operator_was_down_is_honoured_at_start_up(
    world: SagaWorld, saga_name: Names
) -> None:
    name = world.apply(buy(saga_name("ttl-restart"), ttlSecondsAfterFinished=4))
    world.wait_terminal([name])
    world.operator.kill()
    try:
        time.sleep(5)
        assert world.endpoints.kubectl("get", "saga", name).returncode == 0  # nobody to delete it meanwhile
    finally:
        world.operator.start()
    assert gone(world, name)


def test_the_ttl_alone_may_change_with_the_abort(world: SagaWorld, saga_name: Names) -> None:
    name = world.apply(buy(saga_name("ttl-immutable")))
    world.wait_terminal([name])
    result = world.endpoints.kubectl(
        "patch", "saga", name, "--type=merge", "-p", '{"spec":{"compensationAttemptLimit":3}}'
    )
    assert result.returncode != 0
    assert (
        "spec.compensationAttemptLimit cannot change once the saga is created (only spec.abort, from false to "
        "true, and spec.ttlSecondsAfterFinished may change)"
    ) in result.stderr
