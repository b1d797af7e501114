"""The dedupe / tombstone / stored-outcome rules, against a real SQLite file (no Kafka, no mocks)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from participants_support import compensation_of, make_command, order

from saga_buyvideo import users
from saga_participants import ALREADY_COMPENSATED, BusinessError, Disposition, Inbox, open_database
from saga_participants.inbox import NOOP_ACTION_FAILED, NOOP_ACTION_NOT_APPLIED
from saga_protocol import Command, CommandKind, Outcome


class Counted:
    """Wraps a handler and counts its runs: the inbox must not run it for replays and tombstones."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = open_database(tmp_path / "users.db", users.SCHEMA)
    conn.executemany("INSERT INTO accounts VALUES (?, ?)", [("alice", 10_000), ("bob", 500)])
    yield conn
    conn.close()


def balance(conn: sqlite3.Connection, user: str) -> int:
    value: int = conn.execute("SELECT balance FROM accounts WHERE user_id = ?", (user,)).fetchone()[0]
    return value


def count(conn: sqlite3.Connection, table: str) -> int:
    value: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return value


def debit_command(buyer: str = "alice", price: int = 1500, **kwargs: Any) -> Command:
    return make_command(action="debit", step="debit-buyer", payload=order(buyer=buyer, price=price), **kwargs)


def test_a_redelivered_action_is_applied_once_and_its_outcome_replayed(db: sqlite3.Connection) -> None:
    inbox, debit = Inbox(db), Counted(users.debit)
    command = debit_command()

    first = inbox.apply(command, debit)
    second = inbox.apply(command.model_copy(update={"attempt": 2, "message_id": "again"}), debit)

    assert first.disposition is Disposition.APPLIED and not first.duplicate
    assert first.outcome is Outcome.SUCCEEDED
    assert second.disposition is Disposition.REPLAYED and second.duplicate
    assert (second.outcome, second.result) == (first.outcome, first.result)
    assert debit.calls == 1
    assert balance(db, "alice") == 10_000 - 1500
    assert count(db, "debits") == 1
    record = inbox.lookup(command.idempotency_key, CommandKind.ACTION)
    assert record is not None and record.deliveries == 2 and record.first_attempt == 1


def test_the_stored_outcome_survives_a_restart(tmp_path: Path, db: sqlite3.Connection) -> None:
    command = debit_command()
    Inbox(db).apply(command, users.debit)
    db.close()

    reopened = open_database(tmp_path / "users.db", users.SCHEMA)
    try:
        again = Inbox(reopened).apply(command, Counted(users.debit))
        assert again.disposition is Disposition.REPLAYED
        assert balance(reopened, "alice") == 10_000 - 1500
    finally:
        reopened.close()


def test_a_compensation_that_overtakes_its_action_leaves_a_tombstone_and_the_late_action_is_refused(
    db: sqlite3.Connection,
) -> None:
    inbox, debit, refund = Inbox(db), Counted(users.debit), Counted(users.refund)
    action = debit_command()
    compensation = compensation_of(action, "refund")

    tomb = inbox.apply(compensation, refund)
    late = inbox.apply(action, debit)
    late_again = inbox.apply(action, debit)

    assert tomb.disposition is Disposition.TOMBSTONE
    assert tomb.outcome is Outcome.SUCCEEDED and tomb.result == {"noop": NOOP_ACTION_NOT_APPLIED}
    assert late.disposition is Disposition.REFUSED and late.outcome is Outcome.FAILED
    assert late.error is not None and late.error.reason == ALREADY_COMPENSATED
    assert late_again.disposition is Disposition.REPLAYED and late_again.error == late.error
    assert (debit.calls, refund.calls) == (0, 0)
    assert balance(db, "alice") == 10_000
    assert count(db, "debits") == 0


def test_insufficient_funds_fails_changes_nothing_and_is_not_run_again(db: sqlite3.Connection) -> None:
    inbox, debit = Inbox(db), Counted(users.debit)
    command = debit_command(buyer="bob", price=1500)

    failed = inbox.apply(command, debit)
    replayed = inbox.apply(command, debit)

    assert failed.disposition is Disposition.BUSINESS_FAILED and failed.outcome is Outcome.FAILED
    assert failed.error is not None and failed.error.reason == "InsufficientFunds"
    assert replayed.disposition is Disposition.REPLAYED and replayed.error == failed.error
    assert debit.calls == 1
    assert balance(db, "bob") == 500
    assert count(db, "debits") == 0


def test_a_business_error_undoes_what_the_handler_wrote_before_raising(db: sqlite3.Connection) -> None:
    def half_then_refuse(tx: sqlite3.Connection, command: Command) -> None:
        tx.execute("UPDATE accounts SET balance = 0 WHERE user_id = 'alice'")
        raise BusinessError("ChangedMyMind", "wrote, then refused")

    decision = Inbox(db).apply(debit_command(), half_then_refuse)

    assert decision.outcome is Outcome.FAILED
    assert balance(db, "alice") == 10_000


def test_a_compensation_after_a_failed_action_is_a_noop(db: sqlite3.Connection) -> None:
    inbox, refund = Inbox(db), Counted(users.refund)
    action = debit_command(buyer="bob", price=9999)
    inbox.apply(action, users.debit)

    undo = inbox.apply(compensation_of(action, "refund"), refund)

    assert undo.disposition is Disposition.NOOP
    assert undo.outcome is Outcome.SUCCEEDED and undo.result == {"noop": NOOP_ACTION_FAILED}
    assert refund.calls == 0
    assert balance(db, "bob") == 500


def test_a_compensation_undoes_its_action_once_and_gets_the_action_result(db: sqlite3.Connection) -> None:
    inbox, seen = Inbox(db), []

    def refund(tx: sqlite3.Connection, command: Command, debited: dict[str, Any]) -> Any:
        seen.append(debited)
        return users.refund(tx, command, debited)

    action = debit_command(price=2000)
    applied = inbox.apply(action, users.debit)
    compensation = compensation_of(action, "refund")
    undone = inbox.apply(compensation, refund)
    again = inbox.apply(compensation_of(action, "refund", attempt=2), refund)

    assert undone.disposition is Disposition.APPLIED and undone.outcome is Outcome.SUCCEEDED
    assert again.disposition is Disposition.REPLAYED
    assert seen == [applied.result]
    assert balance(db, "alice") == 10_000


def test_an_unexpected_exception_rolls_everything_back_and_stores_nothing(db: sqlite3.Connection) -> None:
    inbox = Inbox(db)
    command = debit_command()

    def flaky(tx: sqlite3.Connection, command: Command) -> Any:
        users.debit(tx, command)  # the effect happens, then something unrelated breaks
        raise ConnectionError("the fraud-check service is down")

    broken = inbox.apply(command, flaky)
    assert broken.disposition is Disposition.TRANSIENT and broken.outcome is Outcome.ERROR
    assert broken.error is not None and broken.error.reason == "ConnectionError"
    assert balance(db, "alice") == 10_000
    assert count(db, "debits") == 0
    assert inbox.lookup(command.idempotency_key, CommandKind.ACTION) is None

    # Nothing was stored, so the next delivery runs the (now healthy) handler for real.
    healed = inbox.apply(command, users.debit)
    assert healed.disposition is Disposition.APPLIED
    assert balance(db, "alice") == 10_000 - 1500


def test_a_business_error_from_a_compensation_is_treated_as_transient(db: sqlite3.Connection) -> None:
    inbox = Inbox(db)
    action = debit_command()
    inbox.apply(action, users.debit)

    def refusing_refund(tx: sqlite3.Connection, command: Command, debited: dict[str, Any]) -> None:
        users.refund(tx, command, debited)
        raise BusinessError("NoRefunds", "a compensation must not do this")

    decision = inbox.apply(compensation_of(action, "refund"), refusing_refund)

    assert decision.disposition is Disposition.TRANSIENT and decision.outcome is Outcome.ERROR
    assert decision.error is not None and decision.error.reason == "BusinessErrorInCompensation"
    assert "NoRefunds" in decision.error.message
    assert inbox.lookup(action.idempotency_key, CommandKind.COMPENSATION) is None
    assert balance(db, "alice") == 10_000 - 1500  # the refund's write was rolled back too


@pytest.mark.parametrize(
    "escape",
    [
        lambda tx: tx.commit(),
        lambda tx: tx.execute("COMMIT"),
        lambda tx: tx.execute("ROLLBACK"),
        lambda tx: tx.execute("RELEASE saga_handler"),
    ],
    ids=["commit()", "COMMIT", "ROLLBACK", "RELEASE the SDK savepoint"],
)
def test_a_handler_cannot_end_the_sdk_transaction(db: sqlite3.Connection, escape: Any) -> None:
    inbox = Inbox(db)
    command = debit_command()

    def sneaky(tx: sqlite3.Connection, command: Command) -> None:
        users.debit(tx, command)
        escape(tx)

    decision = inbox.apply(command, sneaky)

    assert decision.disposition is Disposition.TRANSIENT
    assert balance(db, "alice") == 10_000
    assert inbox.lookup(command.idempotency_key, CommandKind.ACTION) is None


def test_a_handler_may_use_its_own_savepoints(db: sqlite3.Connection) -> None:
    def careful(tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
        tx.execute("SAVEPOINT mine")
        tx.execute("UPDATE accounts SET balance = 1 WHERE user_id = 'bob'")
        tx.execute("ROLLBACK TO mine")
        tx.execute("RELEASE mine")
        return users.debit(tx, command)

    decision = Inbox(db).apply(debit_command(), careful)

    assert decision.disposition is Disposition.APPLIED
    assert (balance(db, "alice"), balance(db, "bob")) == (10_000 - 1500, 500)


@pytest.mark.parametrize("result", [42, ["a", "list"], {"not": {1, 2}}])
def test_a_result_that_is_not_a_json_object_is_a_programming_error(db: sqlite3.Connection, result: Any) -> None:
    decision = Inbox(db).apply(debit_command(), lambda tx, command: result)

    assert decision.disposition is Disposition.TRANSIENT


def test_an_action_returning_nothing_gives_its_compensation_an_empty_result(db: sqlite3.Connection) -> None:
    inbox, seen = Inbox(db), []
    action = debit_command()
    inbox.apply(action, lambda tx, command: None)
    inbox.apply(compensation_of(action, "refund"), lambda tx, command, result: seen.append(result))

    assert seen == [{}]


def test_dedupe_is_per_key_and_kind(db: sqlite3.Connection) -> None:
    inbox = Inbox(db)
    first, second = debit_command(price=100), debit_command(price=200)

    inbox.apply(first, users.debit)
    inbox.apply(second, users.debit)

    assert balance(db, "alice") == 10_000 - 300
    assert count(db, "saga_inbox") == 2


def test_outcomes_are_committed_when_apply_returns(tmp_path: Path, db: sqlite3.Connection) -> None:
    command = debit_command()
    Inbox(db).apply(command, users.debit)

    other = sqlite3.connect(tmp_path / "users.db")
    try:
        assert other.execute("SELECT count(*) FROM saga_inbox").fetchone()[0] == 1
        assert other.execute("SELECT balance FROM accounts WHERE user_id = 'alice'").fetchone()[0] == 8500
    finally:
        other.close()


@pytest.mark.parametrize("reason", ["", "lowercase", "Has Space", "X" * 129])
def test_business_error_reasons_are_camel_case_words(reason: str) -> None:
    with pytest.raises(ValueError):
        BusinessError(reason, "whatever")


def test_the_inbox_refuses_a_connection_with_implicit_transactions(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Inbox(sqlite3.connect(tmp_path / "x.db"))
