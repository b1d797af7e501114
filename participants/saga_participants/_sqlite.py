"""`SqliteStore`: the inbox in the participant's own SQLite file (the default store).

One connection, used from one dedicated thread: SQLite has one writer at a time anyway, and handlers are
plain blocking functions that must not run on the event loop (they would starve aiokafka's heartbeats).
Commands of different sagas therefore queue for that thread; everything around the handlers (fault
injection, retries' backoff, replies, dead letters) still runs concurrently. Each command is one
`BEGIN IMMEDIATE` transaction: it takes the write lock before the dedupe read, so that a second process on
the same file (another replica by mistake, a seed script) cannot slip in between "not seen" and "recorded".
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

from saga_participants._handlers import Handler
from saga_participants._inbox import Decision, Disposition, Rollback, Stored, decide, invoke
from saga_protocol import Command, CommandKind, ErrorInfo, Outcome

INBOX_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS saga_inbox (
    idempotency_key  TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('action', 'compensation')),
    disposition      TEXT    NOT NULL,
    outcome          TEXT    NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    handler          TEXT    NOT NULL,
    result_json      TEXT,
    error_reason     TEXT,
    error_message    TEXT,
    saga_uid         TEXT    NOT NULL,
    saga_namespace   TEXT    NOT NULL,
    saga_name        TEXT    NOT NULL,
    step             TEXT    NOT NULL,
    first_message_id TEXT    NOT NULL,
    first_attempt    INTEGER NOT NULL,
    deliveries       INTEGER NOT NULL DEFAULT 1,
    recorded_at      TEXT    NOT NULL,
    last_delivery_at TEXT    NOT NULL,
    PRIMARY KEY (idempotency_key, kind)
) WITHOUT ROWID;
"""
_SAVEPOINT: Final = "saga_handler"

P = ParamSpec("P")
T = TypeVar("T")


class SqliteStore:
    """The inbox in an SQLite file, next to the participant's own tables (created from `schema`).

    Handlers get the `sqlite3.Connection` as `tx`, with the transaction open. The file is created with
    WAL journaling (readers such as a ledger script never block the service) and `synchronous=FULL` (a
    reply must never announce an outcome that a power cut could take back).
    """

    def __init__(self, path: str | os.PathLike[str], *, schema: str | None = None) -> None:
        self.path = Path(path)
        self.schema = schema
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def connect(self) -> sqlite3.Connection:
        """A new connection to the file, configured as the store's own (the inbox table and `schema`
        created), in autocommit mode. For tools beside the service: seeding, reports, tests."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the store issues its own BEGIN IMMEDIATE / COMMIT. Python's implicit
        # transactions would begin lazily, after the dedupe read.
        conn = sqlite3.connect(os.fspath(self.path), isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(INBOX_SCHEMA)
        if self.schema:
            conn.executescript(self.schema)
        return conn

    async def open(self) -> None:
        if self._executor is not None:
            raise RuntimeError(f"{self} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"saga-sqlite-{self.path.stem}")
        try:
            self._conn = await self._call(self.connect)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        conn, self._conn = self._conn, None
        if executor is None:
            return
        if conn is not None:
            # Queued behind a handler still running after its message was abandoned: its transaction
            # finishes (commit or rollback) before the file is closed, never half-written.
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def apply(self, command: Command, handler: Handler) -> Decision:
        return await self._call(self._apply, command, handler)

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise RuntimeError(f"{self} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _apply(self, command: Command, handler: Handler) -> Decision:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self} is not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            decision = decide(_SqliteTransaction(conn), command, handler)
        except Rollback as rollback:
            conn.execute("ROLLBACK")
            return rollback.decision
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return decision

    def __repr__(self) -> str:
        return f"SqliteStore({os.fspath(self.path)!r})"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _deny_transaction_control(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
    """SQLite authorizer installed while a handler runs: the store owns the transaction.

    A handler that committed would make its effect durable before the inbox row, so a crash or a retry
    would apply it twice. Denying it here catches `conn.commit()`, `execute("COMMIT")` and releasing the
    store's savepoint alike; the handler's own savepoints stay allowed.
    """
    if action == sqlite3.SQLITE_TRANSACTION:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_SAVEPOINT and (arg2 or "").lower() == _SAVEPOINT and arg1 != "BEGIN":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    def lookup(self, idempotency_key: str, kind: CommandKind) -> Stored | None:
        row = self._conn.execute(
            "SELECT outcome, handler, result_json, error_reason, error_message"
            " FROM saga_inbox WHERE idempotency_key = ? AND kind = ?",
            (idempotency_key, kind.value),
        ).fetchone()
        if row is None:
            return None
        return Stored(
            outcome=Outcome(row[0]),
            handler=row[1],
            result=json.loads(row[2]) if row[2] is not None else None,
            error=ErrorInfo(reason=row[3], message=row[4] or "") if row[3] is not None else None,
        )

    def count_delivery(self, command: Command) -> None:
        self._conn.execute(
            "UPDATE saga_inbox SET deliveries = deliveries + 1, last_delivery_at = ?"
            " WHERE idempotency_key = ? AND kind = ?",
            (_now(), command.idempotency_key, command.kind.value),
        )

    def record(self, command: Command, decision: Decision) -> None:
        now = _now()
        self._conn.execute(
            "INSERT INTO saga_inbox (idempotency_key, kind, disposition, outcome, handler, result_json,"
            " error_reason, error_message, saga_uid, saga_namespace, saga_name, step, first_message_id,"
            " first_attempt, deliveries, recorded_at, last_delivery_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            (
                command.idempotency_key,
                command.kind.value,
                decision.disposition.value,
                decision.outcome.value,
                command.action,
                json.dumps(decision.result, separators=(",", ":")) if decision.result is not None else None,
                decision.error.reason if decision.error else None,
                decision.error.message if decision.error else None,
                command.saga_uid,
                command.saga_namespace,
                command.saga_name,
                command.step,
                command.message_id,
                command.attempt,
                now,
                now,
            ),
        )

    def run_handler(self, command: Command, call: Callable[[], object]) -> Decision:
        conn = self._conn
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        conn.set_authorizer(_deny_transaction_control)
        try:
            decision = invoke(call)
        finally:
            conn.set_authorizer(None)
        if decision.disposition is Disposition.TRANSIENT:
            return decision  # the whole transaction is rolled back
        if not conn.in_transaction:
            # Only reachable by defeating the authorizer; the effect is already durable without its inbox
            # row. Nothing safe can be done automatically: stop the line.
            raise RuntimeError(f"handler {command.action} ended the store's transaction; its effect may apply twice")
        if decision.disposition is Disposition.BUSINESS_FAILED:
            # Undo whatever the handler wrote before refusing: a failed action applies nothing.
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
        conn.execute(f"RELEASE {_SAVEPOINT}")
        return decision
