"""The dedupe / tombstone / stored-outcome rules, against every store the SDK ships: a real SQLite file and
a real PostgreSQL server (no Kafka, no mocks). Each test runs once per store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from participants_support import compensation_of, make_command, order

from saga_participants import BusinessError, Decision, Disposition, InboxStore, PostgresStore, SqliteStore
from saga_protocol import MAX_RESULT_BYTES, MAX_RESULT_DEPTH, Command, CommandKind, Outcome, result_problem

# Portable SQL: both stores take it as it is (the handlers below swap the parameter style).
SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (user_id TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS debits (idempotency_key TEXT PRIMARY KEY, user_id TEXT NOT NULL,
                                   amount INTEGER NOT NULL, refunded INTEGER NOT NULL DEFAULT 0);
"""


def sql(tx: Any, query: str, *params: Any) -> Any:
    """Run `query` on a handler's `tx` (sqlite3 takes `?`, psycopg `%s`); the cursor."""
    if not isinstance(tx, sqlite3.Connection):
        query = query.replace("?", "%s")
    return tx.execute(query, params)


def debit(tx: Any, command: Command) -> dict[str, Any]:
    """The users service's debit, written against both stores."""
    buyer, price = command.payload["buyer"], command.payload["price"]
    row = sql(tx, "SELECT balance FROM accounts WHERE user_id = ?", buyer).fetchone()
    if row is None:
        raise BusinessError("UnknownUser", f"there is no account for user {buyer!r}")
    if row[0] < price:
        raise BusinessError("InsufficientFunds", f"{buyer} has {row[0]} cents, the purchase costs {price}")
    sql(tx, "UPDATE accounts SET balance = balance - ? WHERE user_id = ?", price, buyer)
    sql(
        tx,
        "INSERT INTO debits (idempotency_key, user_id, amount) VALUES (?, ?, ?)",
        command.idempotency_key,
        buyer,
        price,
    )
    return {"buyer": buyer, "debitedCents": price, "balanceCents": row[0] - price}


def refund(tx: Any, command: Command, debited: dict[str, Any]) -> dict[str, Any]:
    row = sql(tx, "SELECT user_id, amount FROM debits WHERE idempotency_key = ?", command.idempotency_key).fetchone()
    if row is None:
        raise RuntimeError(f"debit {command.idempotency_key} is recorded as applied but has no debit row")
    sql(tx, "UPDATE accounts SET balance = balance + ? WHERE user_id = ?", row[1], row[0])
    sql(tx, "UPDATE debits SET refunded = 1 WHERE idempotency_key = ?", command.idempotency_key)
    return {"buyer": row[0], "refundedCents": row[1]}


class Counted:
    """Wraps a handler and counts its runs: the inbox must not run it for replays and tombstones."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


class Backend:
    """One store under test, open, with alice (10000 cents) and bob (500), and a side door to look at it."""

    def __init__(self, kind: str, new_store: Callable[[], InboxStore], connect: Callable[[], Any]) -> None:
        self.kind = kind
        self.new_store = new_store
        self._connect = connect
        self.store = new_store()

    def query(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read (or write) through a connection of its own, in autocommit: what another process sees."""
        conn = self._connect()
        try:
            cursor = sql(conn, query, *params)
            rows: list[tuple[Any, ...]] = cursor.fetchall() if cursor.description is not None else []
            return rows
        finally:
            conn.close()

    def balance(self, user: str) -> int:
        value: int = self.query("SELECT balance FROM accounts WHERE user_id = ?", user)[0][0]
        return value

    def count(self, table: str) -> int:
        value: int = self.query(f"SELECT count(*) FROM {table}")[0][0]
        return value

    def inbox_row(self, command: Command, kind: CommandKind | None = None) -> tuple[int, int] | None:
        """(deliveries, first_attempt) of the stored row, or None when nothing is stored."""
        rows = self.query(
            "SELECT deliveries, first_attempt FROM saga_inbox WHERE idempotency_key = ? AND kind = ?",
            command.idempotency_key,
            (kind or command.kind).value,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def apply(self, command: Command, handler: Any) -> Decision:
        return await self.store.apply(command, handler)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "users.db"
        b = Backend(
            "sqlite",
            lambda: SqliteStore(path, schema=SCHEMA),
            lambda: sqlite3.connect(path, isolation_level=None),
        )
    else:
        import psycopg

        dsn: str = request.getfixturevalue("postgres_dsn")
        b = Backend(
            "postgres", lambda: PostgresStore(dsn, schema=SCHEMA), lambda: psycopg.connect(dsn, autocommit=True)
        )
    await b.store.open()
    b.query("INSERT INTO accounts (user_id, balance) VALUES (?, ?), (?, ?)", "alice", 10_000, "bob", 500)
    try:
        yield b
    finally:
        await b.store.close()


def debit_command(buyer: str = "alice", price: int = 1500, **kwargs: Any) -> Command:
    return make_command(action="debit", step="debit-buyer", payload=order(buyer=buyer, price=price), **kwargs)


async def test_a_redelivered_action_is_applied_once_and_its_outcome_replayed(backend: Backend) -> None:
    counted = Counted(debit)
    command = debit_command()

    first = await backend.apply(command, counted)
    second = await backend.apply(command.model_copy(update={"attempt": 2, "message_id": "again"}), counted)

    assert first.disposition is Disposition.APPLIED and not first.duplicate
    assert first.outcome is Outcome.SUCCEEDED
    assert second.disposition is Disposition.REPLAYED and second.duplicate
    assert (second.outcome, second.result) == (first.outcome, first.result)
    assert counted.calls == 1
    assert backend.balance("alice") == 10_000 - 1500
    assert backend.count("debits") == 1
    assert backend.inbox_row(command) == (2, 1)  # two deliveries, the first was attempt 1


async def test_the_stored_outcome_survives_a_restart(backend: Backend) -> None:
    command = debit_command()
    await backend.apply(command, debit)
    await backend.store.close()

    backend.store = backend.new_store()
    await backend.store.open()
    again = await backend.apply(command, Counted(debit))

    assert again.disposition is Disposition.REPLAYED
    assert backend.balance("alice") == 10_000 - 1500


async def test_a_compensation_that_overtakes_its_action_leaves_a_tombstone_and_the_late_action_is_refused(
    backend: Backend,
) -> None:
    counted_debit, counted_refund = Counted(debit), Counted(refund)
    action = debit_command()
    compensation = compensation_of(action, "refund")

    tomb = await backend.apply(compensation, counted_refund)
    late = await backend.apply(action, counted_debit)
    late_again = await backend.apply(action, counted_debit)

    assert tomb.disposition is Disposition.TOMBSTONE
    assert tomb.outcome is Outcome.SUCCEEDED and tomb.result == {"noop": "ActionNotApplied"}
    assert late.disposition is Disposition.REFUSED and late.outcome is Outcome.FAILED
    assert late.error is not None and late.error.reason == "AlreadyCompensated"
    assert late_again.disposition is Disposition.REPLAYED and late_again.error == late.error
    assert (counted_debit.calls, counted_refund.calls) == (0, 0)
    assert backend.balance("alice") == 10_000
    assert backend.count("debits") == 0


async def test_insufficient_funds_fails_changes_nothing_and_is_not_run_again(backend: Backend) -> None:
    counted = Counted(debit)
    command = debit_command(buyer="bob", price=1500)

    failed = await backend.apply(command, counted)
    replayed = await backend.apply(command, counted)

    assert failed.disposition is Disposition.BUSINESS_FAILED and failed.outcome is Outcome.FAILED
    assert failed.error is not None and failed.error.reason == "InsufficientFunds"
    assert replayed.disposition is Disposition.REPLAYED and replayed.error == failed.error
    assert counted.calls == 1
    assert backend.balance("bob") == 500
    assert backend.count("debits") == 0


async def test_a_business_error_undoes_what_the_handler_wrote_before_raising(backend: Backend) -> None:
    def half_then_refuse(tx: Any, command: Command) -> None:
        sql(tx, "UPDATE accounts SET balance = 0 WHERE user_id = 'alice'")
        raise BusinessError("ChangedMyMind", "wrote, then refused")

    decision = await backend.apply(debit_command(), half_then_refuse)

    assert decision.outcome is Outcome.FAILED
    assert backend.balance("alice") == 10_000
    assert backend.count("saga_inbox") == 1  # the refusal is stored


async def test_a_compensation_after_a_failed_action_is_a_noop(backend: Backend) -> None:
    counted = Counted(refund)
    action = debit_command(buyer="bob", price=9999)
    await backend.apply(action, debit)

    undo = await backend.apply(compensation_of(action, "refund"), counted)

    assert undo.disposition is Disposition.NOOP
    assert undo.outcome is Outcome.SUCCEEDED and undo.result == {"noop": "ActionFailed"}
    assert counted.calls == 0
    assert backend.balance("bob") == 500


async def test_a_compensation_undoes_its_action_once_and_gets_the_action_result(backend: Backend) -> None:
    seen: list[dict[str, Any]] = []

    def watched_refund(tx: Any, command: Command, debited: dict[str, Any]) -> Any:
        seen.append(debited)
        return refund(tx, command, debited)

    action = debit_command(price=2000)
    applied = await backend.apply(action, debit)
    undone = await backend.apply(compensation_of(action, "refund"), watched_refund)
    again = await backend.apply(compensation_of(action, "refund", attempt=2), watched_refund)

    assert undone.disposition is Disposition.APPLIED and undone.outcome is Outcome.SUCCEEDED
    assert again.disposition is Disposition.REPLAYED
    assert seen == [applied.result]
    assert backend.balance("alice") == 10_000


async def test_an_unexpected_exception_rolls_everything_back_and_stores_nothing(backend: Backend) -> None:
    command = debit_command()

    def flaky(tx: Any, command: Command) -> Any:
        debit(tx, command)  # the effect happens, then something unrelated breaks
        raise ConnectionError("the fraud-check service is down")

    broken = await backend.apply(command, flaky)
    assert broken.disposition is Disposition.TRANSIENT and broken.outcome is Outcome.ERROR
    assert broken.error is not None and broken.error.reason == "ConnectionError"
    assert backend.balance("alice") == 10_000
    assert backend.count("debits") == 0
    assert backend.inbox_row(command) is None

    # Nothing was stored, so the next delivery runs the (now healthy) handler for real.
    healed = await backend.apply(command, debit)
    assert healed.disposition is Disposition.APPLIED
    assert backend.balance("alice") == 10_000 - 1500


async def test_a_business_error_from_a_compensation_is_treated_as_transient(backend: Backend) -> None:
    action = debit_command()
    await backend.apply(action, debit)

    def refusing_refund(tx: Any, command: Command, debited: dict[str, Any]) -> None:
        refund(tx, command, debited)
        raise BusinessError("NoRefunds", "a compensation must not do this")

    decision = await backend.apply(compensation_of(action, "refund"), refusing_refund)

    assert decision.disposition is Disposition.TRANSIENT and decision.outcome is Outcome.ERROR
    assert decision.error is not None and decision.error.reason == "BusinessErrorInCompensation"
    assert "NoRefunds" in decision.error.message
    assert backend.inbox_row(action, CommandKind.COMPENSATION) is None
    assert backend.balance("alice") == 10_000 - 1500  # the refund's write was rolled back too


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
async def test_a_handler_cannot_end_the_sdk_transaction(backend: Backend, escape: Any) -> None:
    command = debit_command()

    def sneaky(tx: Any, command: Command) -> None:
        debit(tx, command)
        escape(tx)

    decision = await backend.apply(command, sneaky)

    assert decision.disposition is Disposition.TRANSIENT
    assert backend.balance("alice") == 10_000
    assert backend.inbox_row(command) is None
    # ...and the store is still usable: the next delivery applies normally.
    assert (await backend.apply(command, debit)).disposition is Disposition.APPLIED
    assert backend.balance("alice") == 10_000 - 1500


async def test_a_handler_may_use_its_own_savepoints(backend: Backend) -> None:
    def careful(tx: Any, command: Command) -> dict[str, Any]:
        sql(tx, "SAVEPOINT mine")
        sql(tx, "UPDATE accounts SET balance = 1 WHERE user_id = 'bob'")
        sql(tx, "ROLLBACK TO mine")
        sql(tx, "RELEASE mine")
        return debit(tx, command)

    decision = await backend.apply(debit_command(), careful)

    assert decision.disposition is Disposition.APPLIED
    assert (backend.balance("alice"), backend.balance("bob")) == (10_000 - 1500, 500)


@pytest.mark.parametrize("result", [42, ["a", "list"], {"not": {1, 2}}])
async def test_a_result_that_is_not_a_json_object_is_a_programming_error(backend: Backend, result: Any) -> None:
    decision = await backend.apply(debit_command(), lambda tx, command: result)

    assert decision.disposition is Disposition.TRANSIENT


def too_large(kind: str) -> dict[str, Any]:
    """A result over the protocol's limits: 16 KiB serialized, or 32 levels."""
    if kind == "bytes":
        return {"blob": "x" * MAX_RESULT_BYTES}
    nested: dict[str, Any] = {}
    for _ in range(MAX_RESULT_DEPTH):
        nested = {"n": nested}
    return nested


def test_the_limits_are_the_protocols() -> None:
    assert result_problem({"blob": "x" * (MAX_RESULT_BYTES - 11)}) is None  # {"blob":"..."} is 11 bytes more
    assert result_problem(too_large("bytes")) is not None and result_problem(too_large("depth")) is not None


@pytest.mark.parametrize("kind", ["bytes", "depth"])
async def test_an_action_whose_result_is_too_large_fails_is_rolled_back_and_the_refusal_is_stored(
    backend: Backend, kind: str
) -> None:
    command = debit_command()
    counted = Counted(lambda tx, command: {**debit(tx, command), **too_large(kind)})

    first = await backend.apply(command, counted)
    again = await backend.apply(command.model_copy(update={"attempt": 2}), counted)

    assert (first.disposition, first.outcome) == (Disposition.BUSINESS_FAILED, Outcome.FAILED)
    assert first.error is not None and first.error.reason == "ResultTooLarge" and first.result is None
    assert again.duplicate and again.outcome is Outcome.FAILED and again.error == first.error
    assert counted.calls == 1  # permanent: not run again
    assert (backend.balance("alice"), backend.count("debits")) == (10_000, 0)  # the effect was rolled back
    assert backend.inbox_row(command) == (2, 1)
    # Its compensation finds a failed action: nothing to undo.
    undo = await backend.apply(compensation_of(command, "refund"), refund)
    assert undo.disposition is Disposition.NOOP


async def test_a_compensation_whose_result_is_too_large_answers_error_and_stores_nothing(backend: Backend) -> None:
    action = debit_command()
    await backend.apply(action, debit)
    undo = compensation_of(action, "refund")

    decision = await backend.apply(
        undo, lambda tx, command, debited: {**refund(tx, command, debited), **too_large("bytes")}
    )

    assert (decision.disposition, decision.outcome) == (Disposition.TRANSIENT, Outcome.ERROR)
    assert decision.error is not None and decision.error.reason == "ResultTooLarge"
    assert backend.inbox_row(action, CommandKind.COMPENSATION) is None
    assert backend.balance("alice") == 10_000 - 1500  # the refund was rolled back
    # A fixed handler's next delivery undoes the action.
    assert (await backend.apply(undo, refund)).disposition is Disposition.APPLIED
    assert backend.balance("alice") == 10_000


async def test_an_action_returning_nothing_gives_its_compensation_an_empty_result(backend: Backend) -> None:
    seen: list[dict[str, Any]] = []
    action = debit_command()
    await backend.apply(action, lambda tx, command: None)
    await backend.apply(compensation_of(action, "refund"), lambda tx, command, result: seen.append(result))

    assert seen == [{}]


async def test_dedupe_is_per_key_and_kind(backend: Backend) -> None:
    first, second = debit_command(price=100), debit_command(price=200)

    await backend.apply(first, debit)
    await backend.apply(second, debit)

    assert backend.balance("alice") == 10_000 - 300
    assert backend.count("saga_inbox") == 2


async def test_outcomes_are_committed_when_apply_returns(backend: Backend) -> None:
    await backend.apply(debit_command(), debit)

    # backend.query reads through a connection of its own: another process would see the same.
    assert backend.count("saga_inbox") == 1
    assert backend.balance("alice") == 8500


def slow(handler: Any, seconds: float) -> Any:
    def wrapped(*args: Any) -> Any:
        time.sleep(seconds)
        return handler(*args)

    return wrapped


async def test_two_replicas_on_one_database_apply_a_command_once(backend: Backend) -> None:
    """A second process on the same database by mistake (or during a rebalance): both get the same
    command at once; one applies it, the other replays the outcome."""
    other = backend.new_store()
    await other.open()
    try:
        command = debit_command()
        decisions = await asyncio.gather(
            backend.apply(command, slow(debit, 0.2)), other.apply(command, slow(debit, 0.2))
        )
    finally:
        await other.close()

    assert sorted(d.disposition for d in decisions) == [Disposition.APPLIED, Disposition.REPLAYED]
    assert backend.balance("alice") == 10_000 - 1500
    assert backend.count("debits") == 1


async def test_an_action_and_its_compensation_racing_on_two_replicas_never_leave_an_effect(
    backend: Backend,
) -> None:
    """Either the action applied and the compensation undid it, or the compensation left a tombstone and
    the action was refused: never a debit that nobody will refund."""
    other = backend.new_store()
    await other.open()
    try:
        action = debit_command()

        async def compensate_meanwhile() -> Decision:
            await asyncio.sleep(0.05)  # the action's transaction is open (its handler is sleeping)
            return await other.apply(compensation_of(action, "refund"), refund)

        done, undone = await asyncio.gather(backend.apply(action, slow(debit, 0.3)), compensate_meanwhile())
    finally:
        await other.close()

    assert undone.outcome is Outcome.SUCCEEDED
    if done.disposition is Disposition.APPLIED:
        assert undone.disposition is Disposition.APPLIED
    else:
        assert (done.disposition, undone.disposition) == (Disposition.REFUSED, Disposition.TOMBSTONE)
    assert backend.balance("alice") == 10_000


async def test_postgres_runs_handlers_of_different_sagas_at_once(backend: Backend) -> None:
    """SQLite has one writer, so its handlers take turns; PostgreSQL gives each its own connection."""
    if backend.kind != "postgres":
        pytest.skip("SQLite runs one handler at a time (one writer)")
    started = time.monotonic()
    decisions = await asyncio.gather(*(backend.apply(debit_command(price=10), slow(debit, 0.5)) for _ in range(3)))
    elapsed = time.monotonic() - started

    assert all(d.disposition is Disposition.APPLIED for d in decisions)
    assert elapsed < 1.2, f"three 0.5 s handlers took {elapsed:.2f}s: they ran one after the other"
    assert backend.balance("alice") == 10_000 - 30


@pytest.mark.parametrize("reason", ["", "lowercase", "Has Space", "X" * 129])
def test_business_error_reasons_are_camel_case_words(reason: str) -> None:
    with pytest.raises(ValueError):
        BusinessError(reason, "whatever")


def test_a_sqlite_store_files_the_inbox_beside_the_participants_tables(tmp_path: Path) -> None:
    conn = SqliteStore(tmp_path / "x.db", schema=SCHEMA).connect()
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"saga_inbox", "accounts", "debits"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.isolation_level is None  # the store issues its own BEGIN IMMEDIATE
    finally:
        conn.close()
