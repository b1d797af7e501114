"""The buy-video saga end to end: kubectl -> API server -> operator -> Kafka -> participants -> back.

Everything here is real: kube-apiserver with etcd, a Kafka broker, the operator and three participant
processes with their SQLite databases. Assertions read what a user would read (the Saga's status, its
Events) and what the participants' books say.
"""

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


def steps(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in body["status"]["steps"]}


def effects_of(world: SagaWorld, uid: str) -> dict[str, Any]:
    """What the participants' books hold for one saga."""
    ledger = world.ledger()
    return {
        "purchases": [p for p in ledger["purchases"] if p["saga"] == uid],
        "debits": [d for d in ledger["debits"] if d["saga"] == uid],
        "credits": [c for c in ledger["credits"] if c["saga"] == uid],
    }


def wait_for_step(world: SagaWorld, name: str, step: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = world.get(name)
        if (body.get("status") or {}).get("currentStep") == step:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{name} never reached step {step}: {json.dumps(world.get(name).get('status'))}")


def test_success(world: SagaWorld, saga_name: Names) -> None:
    name = world.apply(
        buy_video_saga(saga_name("ok"), {"buyer": "alice", "video": "v-1", "price": 700, "agent": "bob-agency"})
    )
    body = world.wait_terminal([name])[name]
    status = body["status"]
    assert status["phase"] == "Succeeded"
    assert status["progress"] == "3/3 done"
    assert [s["state"] for s in status["steps"]] == ["Succeeded"] * 3
    assert all(s["attempt"] == 1 and s["compensationAttempt"] == 0 for s in status["steps"])
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Completed": "True", "Succeeded": "True"}
    books = effects_of(world, body["metadata"]["uid"])
    assert [p["state"] for p in books["purchases"]] == ["recorded"]
    assert [(d["cents"], d["refunded"]) for d in books["debits"]] == [(700, False)]
    assert [(c["cents"], c["reversed"]) for c in books["credits"]] == [(700, False)]
    reasons = [e["reason"] for e in world.events(name)]
    # Writing behind (the default), the Started Event is held with the start's write and dropped when the saga
    # ends first (docs/architecture.md, "Writing the log behind"); strict, it is always posted.
    assert "Succeeded" in reasons and reasons.count("Started") <= 1


def test_business_failure_compensates_the_completed_step(world: SagaWorld, saga_name: Names) -> None:
    before = world.ledger()["users"]["bob"]
    name = world.apply(
        buy_video_saga(saga_name("poor"), {"buyer": "bob", "video": "v-2", "price": 100_000, "agent": "bob-agency"})
    )
    body = world.wait_terminal([name])[name]
    by_step = steps(body)
    assert body["status"]["phase"] == "Compensated"
    assert by_step["record-purchase"]["state"] == "Compensated"
    assert by_step["debit-buyer"]["state"] == "Refused"
    assert by_step["debit-buyer"]["error"]["reason"] == "InsufficientFunds"
    assert by_step["debit-buyer"]["compensationAttempt"] == 0  # nothing was applied, nothing to undo
    assert by_step["credit-agent"]["state"] == "Skipped" and by_step["credit-agent"]["attempt"] == 0
    books = effects_of(world, body["metadata"]["uid"])
    assert [p["state"] for p in books["purchases"]] == ["removed"]
    assert books["debits"] == [] and books["credits"] == []
    assert world.ledger()["users"]["bob"] == before
    warnings = [e for e in world.events(name) if e["type"] == "Warning"]
    assert any(e["reason"] == "StepRefused" and "InsufficientFunds" in e["message"] for e in warnings)


def test_failure_at_the_agent_compensates_in_reverse_order(world: SagaWorld, saga_name: Names) -> None:
    name = world.apply(
        buy_video_saga(saga_name("closed"), {"buyer": "carol", "video": "v-3", "price": 300, "agent": "closed-agency"})
    )
    body = world.wait_terminal([name])[name]
    by_step = steps(body)
    assert body["status"]["phase"] == "Compensated"
    assert by_step["credit-agent"]["state"] == "Refused"
    assert by_step["debit-buyer"]["state"] == "Compensated"
    assert by_step["record-purchase"]["state"] == "Compensated"
    # Reverse order: the refund was recorded before the purchase was removed.
    assert by_step["debit-buyer"]["compensatedAt"] <= by_step["record-purchase"]["compensatedAt"]
    books = effects_of(world, body["metadata"]["uid"])
    assert [d["refunded"] for d in books["debits"]] == [True]
    assert [p["state"] for p in books["purchases"]] == ["removed"]
    assert books["credits"] == []


def test_timeout_then_retry_then_success(world: SagaWorld, saga_name: Names) -> None:
    retries_before = world.operator.metric("saga_operator_retries_total", kind="action")
    payload = {
        "buyer": "alice",
        "video": "v-4",
        "price": 100,
        "agent": "acme-films",
        "simulate": {"users": {"delaySeconds": 3, "delayAttempts": 1}},
    }
    manifest = buy_video_saga(
        saga_name("slow"), payload, timeout_seconds=1, retry={"limit": 5, "backoffSeconds": 1, "maxBackoffSeconds": 1}
    )
    name = world.apply(manifest)
    body = world.wait_terminal([name])[name]
    debit = steps(body)["debit-buyer"]
    assert body["status"]["phase"] == "Succeeded"
    assert debit["attempt"] >= 2  # the first attempt timed out
    assert world.operator.metric("saga_operator_retries_total", kind="action") > retries_before
    books = effects_of(world, body["metadata"]["uid"])
    assert len(books["debits"]) == 1  # sent at least twice, applied once


def test_abort_mid_saga(world: SagaWorld, saga_name: Names) -> None:
    payload = {
        "buyer": "alice",
        "video": "v-5",
        "price": 200,
        "agent": "acme-films",
        "simulate": {"agents": {"delaySeconds": 4}},
    }
    name = world.apply(buy_video_saga(saga_name("abort"), payload, timeout_seconds=20))
    wait_for_step(world, name, "credit-agent")
    world.kubectl("patch", "saga", name, "--type=merge", "-p", '{"spec":{"abort":true}}')
    body = world.wait_terminal([name], timeout=60)[name]
    by_step = steps(body)
    assert body["status"]["phase"] == "Compensated"
    assert [by_step[s]["state"] for s in ("record-purchase", "debit-buyer", "credit-agent")] == ["Compensated"] * 3
    assert "AbortRequested" in [e["reason"] for e in world.events(name)]
    books = effects_of(world, body["metadata"]["uid"])
    # The in-flight credit was either applied then reversed, or refused after the compensation's tombstone.
    assert all(c["reversed"] for c in books["credits"])
    assert [d["refunded"] for d in books["debits"]] == [True]
    assert [p["state"] for p in books["purchases"]] == ["removed"]


def test_operator_killed_while_a_step_is_in_flight(world: SagaWorld, saga_name: Names) -> None:
    payload = {
        "buyer": "alice",
        "video": "v-6",
        "price": 300,
        "agent": "bob-agency",
        "simulate": {"users": {"delaySeconds": 3}},
    }
    name = world.apply(buy_video_saga(saga_name("crash"), payload, timeout_seconds=30))
    wait_for_step(world, name, "debit-buyer")
    world.operator.kill()  # SIGKILL: no clean-up runs
    world.operator.start()
    body = world.wait_terminal([name], timeout=90)[name]
    assert body["status"]["phase"] == "Succeeded"
    books = effects_of(world, body["metadata"]["uid"])
    assert len(books["purchases"]) == 1 and len(books["debits"]) == 1 and len(books["credits"]) == 1


def test_deleting_a_running_saga_compensates_first(world: SagaWorld, saga_name: Names) -> None:
    payload = {
        "buyer": "alice",
        "video": "v-7",
        "price": 400,
        "agent": "bob-agency",
        "simulate": {"agents": {"delaySeconds": 3}},
    }
    name = world.apply(buy_video_saga(saga_name("delete"), payload, timeout_seconds=20))
    body = wait_for_step(world, name, "credit-agent")
    uid = body["metadata"]["uid"]
    assert "saga.dev/compensate-before-delete" in body["metadata"]["finalizers"]
    world.kubectl("delete", "saga", name, "--wait=false")
    deadline = time.monotonic() + 60
    while world.endpoints.kubectl("get", "saga", name).returncode == 0:
        assert time.monotonic() < deadline, "the deleted saga was never released by its finalizer"
        time.sleep(0.3)
    books = effects_of(world, uid)
    assert all(c["reversed"] for c in books["credits"])
    assert [d["refunded"] for d in books["debits"]] == [True]
    assert [p["state"] for p in books["purchases"]] == ["removed"]


def test_malformed_replies_are_set_aside_and_sagas_go_on(world: SagaWorld, saga_name: Names) -> None:
    from aiokafka import AIOKafkaProducer

    from saga_harness import kafka_access
    from saga_testenv.kafka import run_sync

    before = world.operator.metric("saga_operator_malformed_messages_total")

    async def produce() -> None:
        producer = AIOKafkaProducer(**kafka_access.client_options(world.endpoints))  # the admin
        await producer.start()
        try:
            await producer.send_and_wait(world.reply_topic("users"), b"not json at all", key=b"x")
            await producer.send_and_wait(world.reply_topic("users"), b'{"sagaUid": "x"}', key=b"x")
            await producer.send_and_wait(world.reply_topic("users"), b"{" + b" " * 300_000 + b"}", key=b"x")
        finally:
            await producer.stop()

    run_sync(produce())
    name = world.apply(
        buy_video_saga(
            saga_name("after-garbage"), {"buyer": "alice", "video": "v-8", "price": 50, "agent": "bob-agency"}
        )
    )
    assert world.wait_terminal([name])[name]["status"]["phase"] == "Succeeded"
    deadline = time.monotonic() + 30
    while world.operator.metric("saga_operator_malformed_messages_total") < before + 3:
        assert time.monotonic() < deadline, "malformed replies were not counted"
        time.sleep(0.2)
    for reason in ("NotJson", "SchemaViolation", "Oversized"):
        assert world.operator.metric("saga_operator_malformed_messages_total", reason=reason) >= 1


def test_stuck_compensation_fails_then_resumes_on_the_retry_annotation(world: SagaWorld, saga_name: Names) -> None:
    payload = {
        "buyer": "alice",
        "video": "v-9",
        "price": 250,
        "agent": "bob-agency",
        "simulate": {"agents": {"delaySeconds": 3}},
    }
    manifest = buy_video_saga(
        saga_name("stuck"), payload, timeout_seconds=1, retry={"limit": 10, "backoffSeconds": 1, "maxBackoffSeconds": 1}
    )
    manifest["spec"]["compensationAttemptLimit"] = 2
    name = world.apply(manifest)
    wait_for_step(world, name, "credit-agent")
    videos = world.participants["videos"]
    videos.kill()  # the purchase was recorded; its compensation will find nobody
    try:
        world.kubectl("patch", "saga", name, "--type=merge", "-p", '{"spec":{"abort":true}}')
        body = world.wait_terminal([name], timeout=60)[name]
        assert body["status"]["phase"] == "Failed"
        assert body["status"]["message"].startswith("CompensationStuck")
        assert steps(body)["record-purchase"]["compensationAttempt"] == 2
        assert "CompensationStuck" in [e["reason"] for e in world.events(name) if e["type"] == "Warning"]
    finally:
        videos.start()
    world.kubectl("annotate", "saga", name, "saga.dev/retry=first", "--overwrite")
    body = world.wait_terminal([name], timeout=60)[name]
    deadline = time.monotonic() + 60
    while body["status"]["phase"] == "Failed" and time.monotonic() < deadline:
        time.sleep(0.3)
        body = world.get(name)
    assert body["status"]["phase"] == "Compensated"
    assert body["status"]["retriesGranted"] == 1
    books = effects_of(world, body["metadata"]["uid"])
    assert [p["state"] for p in books["purchases"]] == ["removed"]
