"""A broken or tampered saga on the real stack: it ends with a named reason and a Warning Event, nothing is sent
for it, and a witness saga beside it finishes normally (docs/operations.md, "Sagas the operator will not run").

The world's operator signs every status with the key the harness gives it (SAGA_STATUS_KEY_FILE)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from saga_harness.manifests import buy_video_saga
from saga_harness.world import SagaWorld

pytestmark = pytest.mark.stack

Names = Callable[[str], str]


def witness(world: SagaWorld, saga_name: Names, video: str) -> str:
    return world.apply(
        buy_video_saga(saga_name("witness"), {"buyer": "alice", "video": video, "price": 10, "agent": "acme-films"})
    )


def slow(world: SagaWorld, name: str, video: str) -> str:
    """A saga whose last step (credit-agent) takes 6 s to answer: time to do something to it mid-run."""
    payload = {
        "buyer": "alice",
        "video": video,
        "price": 10,
        "agent": "acme-films",
        "simulate": {"agents": {"delaySeconds": 6}},
    }
    return world.apply(buy_video_saga(name, payload, timeout_seconds=30))


def wait_for(
    world: SagaWorld, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = world.get(name)
        if check(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{name}: {json.dumps(world.get(name).get('status'))}\n{world.operator.log_tail()}")


def warning(world: SagaWorld, name: str, reason: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in world.events(name):
            if event["reason"] == reason and event["type"] == "Warning":
                return str(event["message"])
        time.sleep(0.3)
    raise AssertionError(f"no Warning {reason} on {name}: {[e['reason'] for e in world.events(name)]}")


def status_of(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body.get("status") or {})


def test_a_step_renamed_while_running_is_refused_at_apply_and_the_saga_goes_on(
    world: SagaWorld, saga_name: Names
) -> None:
    """The spec is immutable (the CRD's transition rules), so a real API server never hands the operator a
    renamed step any more; the operator's own defence against one (SpecStatusMismatch) is tested in the pure
    core (tests/domain/test_integrity.py) and against the fake store (tests/unit/test_coordinator_integrity.py)."""
    name = slow(world, saga_name("renamed"), "v-integrity-1")
    wait_for(world, name, lambda b: status_of(b).get("currentStep") == "credit-agent")
    patch = [{"op": "replace", "path": "/spec/steps/1/name", "value": "debit-someone"}]
    refused = world.endpoints.kubectl("patch", "saga", name, "--type=json", "-p", json.dumps(patch))
    assert refused.returncode != 0
    assert "the steps of a saga cannot change once it is created" in refused.stderr
    assert "step debit-buyer" in refused.stderr
    status = status_of(world.wait_terminal([name])[name])
    assert status["phase"] == "Succeeded", status


def test_a_forged_status_is_not_adopted_and_yields_an_event(world: SagaWorld, saga_name: Names) -> None:
    name = slow(world, saga_name("forged"), "v-integrity-3")
    wait_for(world, name, lambda b: status_of(b).get("currentStep") == "credit-agent")
    forged = {"status": {"phase": "Compensated", "seq": 999}}
    world.kubectl("patch", "saga", name, "--subresource=status", "--type=merge", "-p", json.dumps(forged))
    message = warning(world, name, "StatusTampered")
    assert "seq 999" in message and "not adopted" in message
    restored = wait_for(world, name, lambda b: status_of(b).get("seq") != 999, timeout=10)
    assert status_of(restored)["phase"] == "Running"  # its own log, written back over the forgery
    status = status_of(world.wait_terminal([name])[name])
    assert status["phase"] == "Succeeded" and status["seq"] < 999
    assert [s["state"] for s in status["steps"]] == ["Succeeded"] * 3
    assert world.operator.metric("saga_operator_status_refused_total", reason="StatusTampered") >= 1


def test_start_up_survives_a_broken_saga_and_a_witness_succeeds(world: SagaWorld, saga_name: Names) -> None:
    world.operator.stop()
    try:
        broken = saga_name("broken")
        world.apply(
            buy_video_saga(broken, {"buyer": "alice", "video": "v-integrity-4", "price": 10, "agent": "acme-films"})
        )
        # What an admin (or a bug) might leave behind: a step the spec does not have, and no digest.
        bad = {"status": {"phase": "Running", "seq": 3, "steps": [{"name": "no-such-step", "state": "Dispatched"}]}}
        world.kubectl("patch", "saga", broken, "--subresource=status", "--type=merge", "-p", json.dumps(bad))
    finally:
        world.operator.start(wait=False)
    world.operator.wait_ready()
    other = witness(world, saga_name, "v-integrity-5")
    bodies = world.wait_terminal([broken, other])
    assert status_of(bodies[other])["phase"] == "Succeeded"
    status = status_of(bodies[broken])
    assert (status["phase"], status["reason"]) == ("Failed", "StatusTampered"), status
    assert "has no digest" in warning(world, broken, "StatusTampered")
    assert [s["name"] for s in status["steps"]] == ["no-such-step"]  # left as found, for a person


def test_an_unknown_participant_is_rejected_with_the_reason_in_get_wide(world: SagaWorld, saga_name: Names) -> None:
    manifest = buy_video_saga(
        saga_name("stranger"),
        {"buyer": "alice", "video": "v-integrity-6", "price": 10, "agent": "acme-films"},
        participants={"agents": "nobody"},
    )
    name = world.apply(manifest)
    status = status_of(world.wait_terminal([name])[name])
    assert (status["phase"], status["reason"]) == ("Rejected", "UnknownParticipant"), status
    assert "participant 'nobody'" in warning(world, name, "UnknownParticipant")
    assert "UnknownParticipant" in world.kubectl("get", "saga", name, "-o", "wide").splitlines()[1]
    assert "steps" not in status or status["steps"] == []


def test_a_rejected_saga_is_deleted_at_once(world: SagaWorld, saga_name: Names) -> None:
    """Nothing was sent for a Rejected saga, so nothing is undone: its finalizer goes at once on delete."""
    manifest = buy_video_saga(
        saga_name("rejected"),
        {"buyer": "alice", "video": "v-integrity-7", "price": 10, "agent": "acme-films"},
        participants={"agents": "nobody"},
    )
    name = world.apply(manifest)
    status = status_of(world.wait_terminal([name])[name])
    assert (status["phase"], status["reason"]) == ("Rejected", "UnknownParticipant"), status
    began = time.monotonic()
    world.kubectl("delete", "saga", name, "--timeout=20s")
    assert time.monotonic() - began < 20
    assert world.endpoints.kubectl("get", "saga", name).returncode != 0
