"""The buy-video services' business rules, and money conservation under every saga outcome.

The services run through the SDK (saga_participants.testing.run_command: checks, inbox, handler) on real
SQLite files; a tiny coordinator in this file plays the operator (steps in order, compensations in
reverse), with duplicates and overtaking compensations thrown in by hypothesis. No Kafka here:
test_participants_kafka.py covers the transport.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from participants_support import BUY_VIDEO_STEPS, compensation_of, make_command, order

from saga_buyvideo import SERVICES, database_path
from saga_buyvideo.demo import DEMO_AGENTS, DEMO_USERS, read_ledger, seed
from saga_participants import Participant
from saga_participants.testing import run_command
from saga_protocol import Command, CommandKind, Outcome, Reply

INITIAL_TOTAL = sum(DEMO_USERS.values()) + sum(balance for _, balance in DEMO_AGENTS.values())


class Services:
    """The three services on seeded databases in one data directory, their stores open."""

    def __init__(self, data_dir: Path) -> None:
        seed(data_dir)
        self.data_dir = data_dir
        self.participants: dict[str, Participant] = {
            name: factory(database_path(data_dir, name)) for name, factory in SERVICES.items()
        }
        # The tests are synchronous (hypothesis drives them); the SDK is asyncio: a loop of their own.
        self.loop = asyncio.new_event_loop()
        for participant in self.participants.values():
            self.loop.run_until_complete(participant.__aenter__())

    def deliver(self, service: str, command: Command) -> Reply:
        participant = self.participants[service]
        assert participant.handler_for(command.kind, command.action) is not None, f"{service}: {command.action}"
        return self.loop.run_until_complete(run_command(participant, command))

    def connect(self, service: str) -> sqlite3.Connection:
        return sqlite3.connect(database_path(self.data_dir, service), isolation_level=None)

    def close(self) -> None:
        for participant in self.participants.values():
            self.loop.run_until_complete(participant.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    s = Services(tmp_path)
    yield s
    s.close()


def step_command(uid: str, step: int, payload: dict[str, Any]) -> Command:
    _, name, action, _ = BUY_VIDEO_STEPS[step]
    return make_command(saga_uid=uid, step=name, action=action, payload=payload)


@pytest.mark.parametrize(
    ("service", "step", "payload", "reason"),
    [
        ("users", 1, order(buyer="bob", price=501), "InsufficientFunds"),
        ("users", 1, order(buyer="mallory"), "UnknownUser"),
        ("agents", 2, order(agent="closed-agency"), "AgentClosed"),
        ("agents", 2, order(agent="nobody"), "UnknownAgent"),
        ("videos", 0, order(price=-5), "InvalidPayload"),
        ("users", 1, order(price=15.5), "InvalidPayload"),  # type: ignore[arg-type]
        ("agents", 2, {"price": 100}, "InvalidPayload"),
    ],
)
def test_business_failures_change_nothing(
    services: Services, service: str, step: int, payload: dict[str, Any], reason: str
) -> None:
    before = read_ledger(services.data_dir)
    decision = services.deliver(service, step_command(str(uuid.uuid4()), step, payload))

    assert decision.outcome is Outcome.FAILED
    assert decision.error is not None and decision.error.reason == reason
    assert read_ledger(services.data_dir) == before


def test_bob_can_afford_exactly_his_balance(services: Services) -> None:
    decision = services.deliver("users", step_command(str(uuid.uuid4()), 1, order(buyer="bob", price=500)))

    assert decision.outcome is Outcome.SUCCEEDED
    assert read_ledger(services.data_dir)["users"]["bob"] == 0


def test_a_live_purchase_locks_the_video_for_that_buyer_until_it_is_removed(services: Services) -> None:
    first = step_command(str(uuid.uuid4()), 0, order())
    assert services.deliver("videos", first).outcome is Outcome.SUCCEEDED

    second = services.deliver("videos", step_command(str(uuid.uuid4()), 0, order()))
    assert second.outcome is Outcome.FAILED and second.error is not None and second.error.reason == "AlreadyPurchased"
    other_buyer = services.deliver("videos", step_command(str(uuid.uuid4()), 0, order(buyer="carol")))
    assert other_buyer.outcome is Outcome.SUCCEEDED

    services.deliver("videos", compensation_of(first, "remove-purchase"))
    third = services.deliver("videos", step_command(str(uuid.uuid4()), 0, order()))
    assert third.outcome is Outcome.SUCCEEDED


def test_reversing_a_credit_the_agent_already_spent_still_succeeds(services: Services) -> None:
    credit = step_command(str(uuid.uuid4()), 2, order(price=1000))
    services.deliver("agents", credit)
    spend = services.connect("agents")
    spend.execute("UPDATE agents SET balance = 0 WHERE agent_id = 'bob-agency'")  # the agent spent it
    spend.close()

    undo = services.deliver("agents", compensation_of(credit, "reverse-credit"))

    assert undo.outcome is Outcome.SUCCEEDED
    assert read_ledger(services.data_dir)["agents"]["bob-agency"]["balance"] == -1000


# -- money conservation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Chaos:
    """What goes wrong around one saga."""

    duplicate_every_command: bool
    #: The operator gives up on step N (a timeout) and compensates before the action arrives; the action
    #: then arrives late. None: no overtaking.
    overtaken_at: int | None


def run_saga(services: Services, payload: dict[str, Any], chaos: Chaos) -> str:
    """Play the operator for one saga; returns how it ended."""
    uid = str(uuid.uuid4())

    def send(service: str, command: Command) -> Any:
        decision = services.deliver(service, command)
        if chaos.duplicate_every_command:
            replay = services.deliver(service, command)
            assert replay.duplicate and (replay.outcome, replay.result) == (decision.outcome, decision.result)
        return decision

    done: list[Command] = []
    for index, (service, _, _, compensation) in enumerate(BUY_VIDEO_STEPS):
        action = step_command(uid, index, payload)
        if chaos.overtaken_at == index:
            undo = send(service, compensation_of(action, compensation))
            assert undo.outcome is Outcome.SUCCEEDED
            late = send(service, action)
            assert late.outcome is Outcome.FAILED and late.error.reason == "AlreadyCompensated"
            outcome = "aborted"
            break
        decision = send(service, action)
        if decision.outcome is not Outcome.SUCCEEDED:
            outcome = f"failed:{decision.error.reason}"
            break
        done.append(action)
    else:
        return "succeeded"
    for action in reversed(done):
        service, _, _, compensation = next(s for s in BUY_VIDEO_STEPS if s[1] == action.step)
        undone = send(service, compensation_of(action, compensation))
        assert undone.outcome is Outcome.SUCCEEDED
    return outcome


sagas = st.lists(
    st.tuples(
        st.fixed_dictionaries(
            {
                "buyer": st.sampled_from([*DEMO_USERS, "mallory"]),
                "video": st.sampled_from(["v-1", "v-2", "v-42"]),
                "price": st.integers(min_value=1, max_value=6000),
                "agent": st.sampled_from([*DEMO_AGENTS, "nobody"]),
            }
        ),
        st.builds(Chaos, st.booleans(), st.none() | st.integers(min_value=0, max_value=2)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sagas)
def test_every_saga_outcome_conserves_money_and_leaves_the_ledgers_consistent(
    runs: list[tuple[dict[str, Any], Chaos]],
) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        services = Services(Path(data_dir))
        try:
            outcomes = [run_saga(services, payload, chaos) for payload, chaos in runs]
            ledger = read_ledger(data_dir)
        finally:
            services.close()

    assert ledger["moneyTotal"] == INITIAL_TOTAL
    assert ledger["consistent"]
    assert ledger["completedSagas"] == outcomes.count("succeeded")
    assert all(balance >= 0 for balance in ledger["users"].values())


def test_the_three_demo_sagas_end_as_the_demo_expects(services: Services) -> None:
    happy = run_saga(services, order(buyer="alice", video="v-1", price=1500), Chaos(False, None))
    broke = run_saga(services, order(buyer="bob", video="v-2", price=1500), Chaos(False, None))
    closed = run_saga(services, order(buyer="alice", video="v-3", agent="closed-agency"), Chaos(False, None))
    ledger = read_ledger(services.data_dir)

    assert (happy, broke, closed) == ("succeeded", "failed:InsufficientFunds", "failed:AgentClosed")
    assert ledger["users"]["alice"] == 10_000 - 1500
    assert ledger["agents"]["bob-agency"]["balance"] == 1500
    assert ledger["moneyTotal"] == INITIAL_TOTAL and ledger["consistent"]
    assert [(p["video"], p["state"]) for p in ledger["purchases"]] == [
        ("v-1", "recorded"),
        ("v-2", "removed"),
        ("v-3", "removed"),
    ]


def test_seed_reset_empties_everything_including_the_inbox(tmp_path: Path) -> None:
    services = Services(tmp_path)
    try:
        run_saga(services, order(), Chaos(False, None))
    finally:
        services.close()
    assert read_ledger(tmp_path)["completedSagas"] == 1

    again = seed(tmp_path)  # without reset: keeps what is there
    assert again["completedSagas"] == 1
    fresh = seed(tmp_path, reset=True)
    assert fresh["completedSagas"] == 0 and fresh["purchases"] == [] and fresh["moneyTotal"] == INITIAL_TOTAL
    conn = sqlite3.connect(database_path(tmp_path, "users"))
    try:
        assert conn.execute("SELECT count(*) FROM saga_inbox").fetchone()[0] == 0
    finally:
        conn.close()


def test_every_service_registers_the_documented_handlers() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        for service, _, action, compensation in BUY_VIDEO_STEPS:
            p = SERVICES[service](database_path(data_dir, service))
            assert p.handler_for(CommandKind.ACTION, action) is not None
            assert p.handler_for(CommandKind.COMPENSATION, compensation) is not None
            assert p.command_topic == f"saga.commands.{service}"
