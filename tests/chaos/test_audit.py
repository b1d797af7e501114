"""The chaos run's checker, checked: each kind of broken book it must catch, on made-up data (no stack).

A checker that passes everything proves nothing; these are the violations the long run reports when the
code under test is wrong (two of them were: see docs/chaos.md, "What the chaos work found").
"""

from __future__ import annotations

import copy
from typing import Any

from saga_harness.chaos.audit import Violation, audit, audit_dead_letters
from saga_harness.chaos.books import Books
from saga_harness.chaos.malformed import Injected
from saga_harness.chaos.plan import STEPS, SagaPlan
from saga_protocol import idempotency_key

UID = "11111111-2222-3333-4444-555555555555"


def plan(**changes: Any) -> SagaPlan:
    fields: dict[str, Any] = {"name": "s", "buyer": "b", "video": "v", "price": 100, "agent": "a"}
    return SagaPlan(**{**fields, **changes})


def body(phase: str, states: list[str]) -> dict[str, Any]:
    steps = [{"name": step, "state": state, "attempt": 1} for (step, _, _, _), state in zip(STEPS, states, strict=True)]
    return {"metadata": {"uid": UID, "name": "s"}, "status": {"phase": phase, "steps": steps}}


def books(live: bool | None, money_moved: bool | None = None) -> tuple[Books, Books]:
    """Books before and after one saga of 100 cents; live=None: it left no rows at all."""
    before = Books(users={"b": 1000}, agents={"a": 0}, effects={s: [] for s in ("videos", "users", "agents")}, inbox={})
    before.inbox = {s: [] for s in ("videos", "users", "agents")}
    after = copy.deepcopy(before)
    if live is None:
        return before, after
    moved = live if money_moved is None else money_moved
    after.users["b"] -= 100 if moved else 0
    after.agents["a"] += 100 if moved else 0
    for step, service, _, _ in STEPS:
        key = idempotency_key(UID, step)
        who = "a" if service == "agents" else "b"
        order = [step for step, _, _, _ in STEPS].index(step)
        after.effects[service].append(
            {
                "key": key,
                "saga": UID,
                "live": live,
                "cents": 100,
                "who": who,
                "applied": f"2026-01-01T00:00:0{order}+00:00",
                "undone": None if live else f"2026-01-01T00:00:0{9 - order}+00:00",  # in reverse order
            }
        )
        after.inbox[service].append(
            {
                "key": key,
                "kind": "action",
                "disposition": "applied",
                "outcome": "succeeded",
                "saga": UID,
                "deliveries": 1,
            }
        )
        if not live:
            after.inbox[service].append(
                {
                    "key": key,
                    "kind": "compensation",
                    "disposition": "applied",
                    "outcome": "succeeded",
                    "saga": UID,
                    "deliveries": 1,
                }
            )
    return before, after


def violations(p: SagaPlan, b: dict[str, Any], before: Books, after: Books) -> list[str]:
    found, _ = audit([p], {"s": b}, before, after)
    return [str(v) for v in found]


def test_consistent_books_pass() -> None:
    assert violations(plan(), body("Succeeded", ["Succeeded"] * 3), *books(live=True)) == []
    assert violations(plan(), body("Compensated", ["Compensated"] * 3), *books(live=False)) == []
    assert violations(plan(), body("Compensated", ["Refused", "Skipped", "Skipped"]), *books(live=None)) == []


def test_a_saga_not_finished() -> None:
    assert any(
        "not finished" in v for v in violations(plan(), body("Compensating", ["Compensating"] * 3), *books(None))
    )


def test_compensated_with_an_effect_left_live() -> None:
    before, after = books(live=True)
    found = violations(plan(), body("Compensated", ["Compensated"] * 3), before, after)
    assert any("still live" in v for v in found)


def test_compensated_while_a_compensation_is_still_in_flight() -> None:
    found = violations(plan(), body("Compensated", ["Compensating", "Compensated", "Compensated"]), *books(False))
    assert any("phase Compensated but steps" in v for v in found)


def test_succeeded_with_a_reversed_credit_and_money_lost() -> None:
    before, after = books(live=True)
    after.effects["agents"][0]["live"] = False
    after.agents["a"] -= 100
    after.inbox["agents"].append({**after.inbox["agents"][0], "kind": "compensation"})
    found = violations(plan(), body("Succeeded", ["Succeeded"] * 3), before, after)
    assert any("0 live effect(s) at agents" in v for v in found)
    assert any("money not conserved" in v for v in found)


def test_an_effect_applied_twice() -> None:
    before, after = books(live=True)
    after.effects["users"].append(dict(after.effects["users"][0], key="other"))
    after.users["b"] -= 100
    found = violations(plan(), body("Succeeded", ["Succeeded"] * 3), before, after)
    assert any("2 rows at users" in v for v in found)
    assert any("without an applied action" in v for v in found)


def test_a_saga_that_cannot_succeed_did() -> None:
    found = violations(plan(cannot_succeed="no money"), body("Succeeded", ["Succeeded"] * 3), *books(True))
    assert any("Succeeded although no money" in v for v in found)


def test_a_step_never_sent_that_left_a_row() -> None:
    before, after = books(live=False)
    found = violations(plan(), body("Compensated", ["Compensated", "Compensated", "Skipped"]), before, after)
    assert any("step credit-agent was never sent" in v for v in found)


class Record:
    def __init__(self, headers: list[tuple[str, bytes | None]], key: bytes = b"k") -> None:
        self.headers, self.key = headers, key


def test_dead_letters() -> None:
    sent = [
        Injected("i1", "saga.replies.x", "not-json", ("NotJson",), acked=True),
        Injected("i2", "saga.replies.x", "oversized", ("Oversized",), acked=True),
        Injected("i3", "saga.replies.x", "empty", ("EmptyMessage",), acked=False),
    ]
    dead = {
        "saga.replies.x.dlq": [
            Record([("dlq_reason", b"NotJson"), ("chaos_injected", b"i1")]),
            Record([("dlq_reason", b"UnknownSaga")], key=UID.encode()),
        ],
        "saga.commands.users-x.dlq": [Record([("dlq_reason", b"ReplyUndeliverable")])],
    }
    found, figures = audit_dead_letters(sent, dead, {UID: "s"})
    texts = [str(v) for v in found]
    assert texts == [
        "s: a real message was dead-lettered to saga.replies.x.dlq: UnknownSaga",
        "malformed oversized on saga.replies.x was never dead-lettered",
    ]
    assert figures["repliesUndeliverableDeadLettered"] == 1
    assert figures["malformedUnacknowledged"] == 1
    assert all(isinstance(v, Violation) for v in found)


def test_compensations_out_of_reverse_order() -> None:
    before, after = books(live=False)
    after.effects["users"][0]["undone"] = "2026-01-01T00:00:09.5+00:00"  # refunded after the purchase was removed
    found = violations(plan(), body("Compensated", ["Compensated"] * 3), before, after)
    assert found == ["s (11111111-2222-3333-4444-555555555555): videos undone before users: compensations out of order"]


def test_actions_out_of_order() -> None:
    before, after = books(live=True)
    after.effects["agents"][0]["applied"] = "2026-01-01T00:00:00.5+00:00"  # credited before the debit
    found = violations(plan(), body("Succeeded", ["Succeeded"] * 3), before, after)
    assert found == ["s (11111111-2222-3333-4444-555555555555): agents applied before users: actions out of order"]
