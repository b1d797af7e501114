"""Dependencies that misbehave: the broker down when the operator starts, the API server frozen for a
while, a participant that never answers. The operator waits with backoff, says not-ready on /readyz
(alive on /healthz) while it cannot work, and recovers without a restart; a saga whose participant stays
silent times out, retries, and is compensated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from saga_harness.chaos.probes import http_status, wait_until
from saga_harness.chaos.world import ChaosWorld
from saga_harness.faults import StackFaults, service_paused

pytestmark = pytest.mark.stack

MakeWorld = Callable[..., ChaosWorld]


def purchase(video: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"buyer": "alice", "video": video, "price": 500, "agent": "bob-agency", **(extra or {})}


def steps(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in (body.get("status") or {}).get("steps") or []}


def books_of(world: ChaosWorld, uid: str) -> dict[str, list[bool]]:
    """Per participant, the `live` flag of each row this saga left (one row per step at most)."""
    ledger = world.world.ledger()
    return {
        "videos": [p["state"] == "recorded" for p in ledger["purchases"] if p["saga"] == uid],
        "users": [not d["refunded"] for d in ledger["debits"] if d["saga"] == uid],
        "agents": [not c["reversed"] for c in ledger["credits"] if c["saga"] == uid],
    }


def test_operator_started_while_kafka_is_down_becomes_ready_when_kafka_comes_up(
    make_world: MakeWorld, faults: StackFaults
) -> None:
    world = make_world(operator=False)
    operator = world.operator
    faults.stop_kafka()
    operator.start(wait=False)
    wait_until(lambda: http_status(operator, "/healthz") == 200, 60, "the operator's HTTP server")
    # Waiting for the broker with backoff: alive, not ready, not crashing.
    for _ in range(12):
        assert http_status(operator, "/readyz") == 503
        assert http_status(operator, "/healthz") == 200
        time.sleep(0.5)
    assert operator.metric("saga_operator_ready") == 0
    assert operator.record is not None
    pid = operator.record.pid

    faults.start_kafka()
    wait_until(lambda: http_status(operator, "/readyz") == 200, 120, "ready once Kafka is back")
    assert operator.running() and operator.record.pid == pid and operator.starts == 1, "recovered without a restart"

    world.apply([world.saga("after-kafka", purchase("v-kafka"))])
    body = world.wait_terminal(["after-kafka"], timeout=120)["after-kafka"]
    assert body["status"]["phase"] == "Succeeded"
    assert books_of(world, body["metadata"]["uid"]) == {"videos": [True], "users": [True], "agents": [True]}


def test_api_server_frozen_operator_not_ready_meanwhile_then_recovers_without_a_restart(
    make_world: MakeWorld, faults: StackFaults
) -> None:
    world = make_world()
    operator = world.operator
    assert operator.record is not None
    pid = operator.record.pid
    # Slow agents (3 s per credit, within the 10 s step timeout): the sagas are in flight, replies keep
    # arriving and status writes are due while the API server does not answer.
    slow = {"simulate": {world.names["agents"]: {"delaySeconds": 3}}}
    names = [f"frozen-{i}" for i in range(3)]
    world.apply([world.saga(n, purchase(f"v-frozen-{i}", slow), timeout_seconds=10) for i, n in enumerate(names)])
    wait_until(lambda: all(p == "Running" for _, p in world.summary().values()), 60, "the sagas running")

    with faults.apiserver_paused():
        took = wait_until(lambda: http_status(operator, "/readyz") == 503, 30, "/readyz 503 while frozen")
        for _ in range(10):  # and alive all the while
            assert http_status(operator, "/healthz") == 200
            time.sleep(0.5)
        assert operator.metric("saga_operator_ready") == 0
    print(f"the operator noticed the frozen API server after {took:.1f}s")

    wait_until(lambda: http_status(operator, "/readyz") == 200, 90, "ready again after the thaw")
    assert operator.running() and operator.record.pid == pid and operator.starts == 1, "recovered without a restart"
    bodies = world.wait_terminal(names, timeout=180)
    for name, body in bodies.items():
        assert body["status"]["phase"] == "Succeeded", (name, body["status"])
        assert books_of(world, body["metadata"]["uid"]) == {"videos": [True], "users": [True], "agents": [True]}
    # The same process counted all of it.
    assert operator.metric("saga_operator_sagas", phase="Succeeded") == len(names)
    assert operator.metric("saga_operator_step_outcomes_total", kind="action", outcome="succeeded") >= 3 * len(names)
    assert operator.metric("saga_operator_step_latency_seconds_count") >= 3 * len(names)


def test_a_participant_that_never_replies_times_out_is_retried_and_compensated(make_world: MakeWorld) -> None:
    world = make_world()
    operator, agents = world.operator, world.participants["agents"]
    retries_before = operator.metric("saga_operator_retries_total", kind="action")
    manifest = world.saga(
        "silent-agent",
        purchase("v-silent"),
        timeout_seconds=2,
        retry={"limit": 1, "backoffSeconds": 1, "maxBackoffSeconds": 1},
    )
    with service_paused(agents):  # SIGSTOP: connected, alive, silent
        world.apply([manifest])

        def undoing_the_silent_step() -> bool:
            body = world.get("silent-agent")
            credit = steps(body).get("credit-agent") or {}
            phase = (body.get("status") or {}).get("phase")
            return bool(phase == "Compensating" and credit.get("compensationAttempt", 0) >= 2)

        wait_until(undoing_the_silent_step, 90, "the credit given up and its compensation retried")
        body = world.get("silent-agent")
        by_step = steps(body)
        assert by_step["credit-agent"]["attempt"] == 2  # the first attempt and one retry
        assert by_step["credit-agent"]["error"]["reason"] == "Timeout"
        # Reverse order: the other steps wait until the credit (which may have been applied) is undone.
        assert by_step["debit-buyer"]["state"] == by_step["record-purchase"]["state"] == "Succeeded"
        # A silent participant is the saga's problem, not the operator's: still ready.
        assert http_status(operator, "/readyz") == 200
        assert operator.metric("saga_operator_retries_total", kind="action") >= retries_before + 1
        assert operator.metric("saga_operator_compensations_started_total") >= 1

    # Thawed, the participant works through its backlog: the late credit (applied, then reversed by the
    # compensation behind it in the same partition), the retry (a replay), the compensations.
    body = world.wait_terminal(["silent-agent"], timeout=120)["silent-agent"]
    assert body["status"]["phase"] == "Compensated", body["status"]
    assert {s["state"] for s in steps(body).values()} == {"Compensated"}
    books = books_of(world, body["metadata"]["uid"])
    assert books["videos"] == [False] and books["users"] == [False] and books["agents"] in ([False], [])
