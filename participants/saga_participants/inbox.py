"""The inbox: dedupe, tombstones and stored outcomes, in the same SQLite transaction as the business effect.

This module is the participant side of the saga rules and has no I/O but SQLite, so it is tested directly
against a real database file. One row per (idempotency key, kind) records what this participant answered
the first time; every later delivery of the same command gets that answer again without running the
handler. The action and the compensation of one step share the idempotency key ("<sagaUid>/<step>"), which
is what lets a compensation that overtook its action leave a tombstone that the late action then finds.

Everything the SDK writes for a command (the inbox row) and everything the handler writes (the business
effect) commit or roll back together: a crash between them cannot leave an effect without its dedupe row,
which would apply it twice on redelivery, nor a dedupe row without its effect, which would lose it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeAlias

from saga_protocol import Command, CommandKind, ErrorInfo, Outcome

log = logging.getLogger(__name__)

#: A handler's result goes into the reply, which must stay well under the protocol's message limit.
MAX_RESULT_BYTES: Final = 64 * 1024
_SAVEPOINT: Final = "saga_handler"
_REASON_LENGTH: Final = 128
_MESSAGE_LENGTH: Final = 4096

#: An action handler: runs inside the open transaction, returns what the reply's `result` carries.
ActionHandler: TypeAlias = Callable[[sqlite3.Connection, Command], Mapping[str, Any] | None]
#: A compensation handler also gets the stored result of the action it undoes. It is only called when
#: that action was applied (otherwise the SDK answers by itself), so the result is always a dict: `{}`
#: when the action returned nothing.
CompensationHandler: TypeAlias = Callable[[sqlite3.Connection, Command, dict[str, Any]], Mapping[str, Any] | None]
Handler: TypeAlias = ActionHandler | CompensationHandler

SCHEMA: Final = """
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


class BusinessError(Exception):
    """Raised by an action handler to refuse the command for a business reason (e.g. InsufficientFunds).

    The reply says `failed`, the outcome is stored (a redelivery gets the same answer) and nothing the
    handler wrote is kept. Never retried. A compensation must not raise it: compensations cannot fail for
    business reasons, so the SDK treats that as a programming error and replies `error` (retried).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        # Checked here, where the mistake is made, rather than when the reply fails validation later.
        if not reason or len(reason) > _REASON_LENGTH or not reason[0].isupper() or not reason.isalnum():
            raise ValueError(f"a BusinessError reason is a CamelCase word of at most 128 characters, not {reason!r}")
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


class Disposition(StrEnum):
    """What the inbox did with one delivery of a command."""

    APPLIED = "applied"  # the handler ran and its effect committed with the inbox row
    BUSINESS_FAILED = "business-failed"  # the action raised BusinessError: nothing applied, outcome stored
    REFUSED = "refused"  # a late action after its compensation: nothing applied, refusal stored
    TOMBSTONE = "tombstone"  # a compensation before (or without) its action: recorded, nothing to undo
    NOOP = "noop"  # a compensation of an action that failed or was refused: nothing to undo
    REPLAYED = "replayed"  # a duplicate: the stored outcome, handler not run
    TRANSIENT = "transient"  # the handler raised: everything rolled back, nothing stored


#: Reasons carried in the result of compensations that had nothing to undo.
NOOP_ACTION_NOT_APPLIED: Final = "ActionNotApplied"
NOOP_ACTION_FAILED: Final = "ActionFailed"
#: The reason a late action is refused with.
ALREADY_COMPENSATED: Final = "AlreadyCompensated"


@dataclass(frozen=True)
class Decision:
    """The answer to one delivery; the SDK turns it into a Reply."""

    disposition: Disposition
    outcome: Outcome
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    #: For TRANSIENT: what the handler raised (or what went wrong around it).
    exception: BaseException | None = None
    #: Wall time of the handler when it ran (None when it did not run, e.g. a replay).
    handler_seconds: float | None = None

    @property
    def duplicate(self) -> bool:
        return self.disposition is Disposition.REPLAYED


@dataclass(frozen=True)
class InboxRecord:
    """One stored row: what this participant answered the first time it saw (key, kind)."""

    idempotency_key: str
    kind: CommandKind
    disposition: Disposition
    outcome: Outcome
    handler: str
    result: dict[str, Any] | None
    error: ErrorInfo | None
    saga_uid: str
    step: str
    first_message_id: str
    first_attempt: int
    deliveries: int


def open_database(path: str | os.PathLike[str], schema: str | None = None) -> sqlite3.Connection:
    """Open (creating if needed) a participant database: the inbox table plus the participant's own schema.

    The connection is in autocommit mode (`isolation_level=None`) because the inbox issues its own
    BEGIN IMMEDIATE / COMMIT: Python's implicit transactions would begin lazily, after the dedupe read,
    letting two processes on one file both decide "not seen yet".
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=30.0)
    # WAL lets `saga-participant ledger` read while the service writes. FULL sync: a reply must never
    # announce an outcome that a power cut could take back.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(SCHEMA)
    if schema:
        conn.executescript(schema)
    return conn


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _normalize_result(value: object) -> dict[str, Any]:
    """A handler's return value as the JSON object the reply carries; anything else is a programming error."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"a handler returns a mapping or None, not {type(value).__name__}")
    encoded = json.dumps(dict(value), separators=(",", ":"))
    if len(encoded) > MAX_RESULT_BYTES:
        raise ValueError(f"a handler result is {len(encoded)} bytes, the limit is {MAX_RESULT_BYTES}")
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def _deny_transaction_control(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
    """SQLite authorizer installed while a handler runs: the SDK owns the transaction.

    A handler that committed would make its effect durable before the inbox row, so a crash or a retry
    would apply it twice. Blocking it here catches `conn.commit()`, `execute("COMMIT")` and releasing the
    SDK's savepoint alike; the handler's own savepoints stay allowed.
    """
    if action == sqlite3.SQLITE_TRANSACTION:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_SAVEPOINT and (arg2 or "").lower() == _SAVEPOINT and arg1 != "BEGIN":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class _Rollback(Exception):
    """Internal: roll the transaction back and return the decision it carries."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.disposition)
        self.decision = decision


class Inbox:
    """Applies commands exactly once per (idempotency key, kind) on one SQLite connection.

    Not thread-safe: one Inbox per connection, used from one thread (the SDK runs it on a dedicated
    database thread so that handlers never block the Kafka client's event loop).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        if conn.isolation_level is not None:
            raise ValueError("the inbox needs a connection opened with isolation_level=None (see open_database)")
        self._conn = conn

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    def apply(self, command: Command, handler: Handler) -> Decision:
        """Apply one delivery of `command` with `handler` (the registered action or compensation).

        Returns the decision; a TRANSIENT decision means the transaction was rolled back and nothing was
        stored, so a later delivery runs the handler again. Raises only when the database itself fails
        (locked, disk full): the caller treats that like a transient handler failure.
        """
        conn = self._conn
        # IMMEDIATE takes the write lock before the dedupe read: a second process on the same file
        # (another replica by mistake, a seed script) cannot slip in between "not seen" and "recorded".
        conn.execute("BEGIN IMMEDIATE")
        try:
            if command.kind is CommandKind.ACTION:
                decision = self._apply_action(command, handler)  # type: ignore[arg-type]
            else:
                decision = self._apply_compensation(command, handler)  # type: ignore[arg-type]
        except _Rollback as rollback:
            conn.execute("ROLLBACK")
            return rollback.decision
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return decision

    def lookup(self, idempotency_key: str, kind: CommandKind) -> InboxRecord | None:
        row = self._conn.execute(
            "SELECT idempotency_key, kind, disposition, outcome, handler, result_json, error_reason,"
            " error_message, saga_uid, step, first_message_id, first_attempt, deliveries"
            " FROM saga_inbox WHERE idempotency_key = ? AND kind = ?",
            (idempotency_key, kind.value),
        ).fetchone()
        if row is None:
            return None
        error = ErrorInfo(reason=row[6], message=row[7] or "") if row[6] is not None else None
        return InboxRecord(
            idempotency_key=row[0],
            kind=CommandKind(row[1]),
            disposition=Disposition(row[2]),
            outcome=Outcome(row[3]),
            handler=row[4],
            result=json.loads(row[5]) if row[5] is not None else None,
            error=error,
            saga_uid=row[8],
            step=row[9],
            first_message_id=row[10],
            first_attempt=row[11],
            deliveries=row[12],
        )

    # -- the rules ---------------------------------------------------------------------------------

    def _apply_action(self, command: Command, handler: ActionHandler) -> Decision:
        stored = self._replay(command)
        if stored is not None:
            return stored
        if self.lookup(command.idempotency_key, CommandKind.COMPENSATION) is not None:
            # The compensation overtook this action and left a tombstone (it cannot be a real undo: that
            # needs an applied action, which would have been replayed above). Applying now would leave an
            # effect that nobody will ever compensate: refuse, and store the refusal so that every
            # redelivery gets the same answer.
            log.warning(
                "refusing late action %s for %s: its compensation was already recorded",
                command.action,
                command.idempotency_key,
            )
            decision = Decision(
                Disposition.REFUSED,
                Outcome.FAILED,
                error=ErrorInfo(
                    reason=ALREADY_COMPENSATED,
                    message=f"step {command.step} of saga {command.saga_uid} was compensated before this action "
                    "arrived; nothing was applied",
                ),
            )
            self._record(command, decision)
            return decision
        decision = self._run(command, lambda: handler(self._conn, command))
        if decision.disposition is Disposition.TRANSIENT:
            raise _Rollback(decision)
        self._record(command, decision)
        return decision

    def _apply_compensation(self, command: Command, handler: CompensationHandler) -> Decision:
        stored = self._replay(command)
        if stored is not None:
            return stored
        action = self.lookup(command.idempotency_key, CommandKind.ACTION)
        if action is None:
            # Commutativity: the compensation arrived first (or the action never will). Record a
            # tombstone so the late action is refused, and succeed: there is nothing to undo.
            decision = Decision(Disposition.TOMBSTONE, Outcome.SUCCEEDED, result={"noop": NOOP_ACTION_NOT_APPLIED})
        elif action.outcome is Outcome.FAILED:
            # The action applied nothing (business failure or refusal): undoing it is a no-op.
            decision = Decision(Disposition.NOOP, Outcome.SUCCEEDED, result={"noop": NOOP_ACTION_FAILED})
        else:
            action_result = action.result or {}
            decision = self._run(command, lambda: handler(self._conn, command, action_result))
            if decision.disposition is Disposition.BUSINESS_FAILED:
                # A compensation that "fails for a business reason" would strand the saga half-undone.
                # It is a bug in the participant: log it loudly and let the operator retry it.
                assert decision.error is not None
                log.error(
                    "compensation %s for %s raised BusinessError %s: compensations cannot fail for business "
                    "reasons; replying error so that it is retried. Fix the handler.",
                    command.action,
                    command.idempotency_key,
                    decision.error.reason,
                )
                raise _Rollback(
                    Decision(
                        Disposition.TRANSIENT,
                        Outcome.ERROR,
                        error=ErrorInfo(
                            reason="BusinessErrorInCompensation",
                            message=_truncate(f"{decision.error.reason}: {decision.error.message}", _MESSAGE_LENGTH),
                        ),
                        exception=decision.exception,
                        handler_seconds=decision.handler_seconds,
                    )
                )
            if decision.disposition is Disposition.TRANSIENT:
                raise _Rollback(decision)
        self._record(command, decision)
        return decision

    def _run(self, command: Command, call: Callable[[], Mapping[str, Any] | None]) -> Decision:
        """Run a handler inside a savepoint, with transaction control taken away from it."""
        conn = self._conn
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        conn.set_authorizer(_deny_transaction_control)
        started = time.perf_counter()
        try:
            try:
                result = _normalize_result(call())
            finally:
                elapsed = time.perf_counter() - started
                conn.set_authorizer(None)
        except BusinessError as exc:
            # Undo whatever the handler wrote before refusing: a failed action applies nothing.
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            conn.execute(f"RELEASE {_SAVEPOINT}")
            return Decision(
                Disposition.BUSINESS_FAILED,
                Outcome.FAILED,
                error=ErrorInfo(reason=exc.reason, message=_truncate(exc.message, _MESSAGE_LENGTH)),
                exception=exc,
                handler_seconds=elapsed,
            )
        except Exception as exc:
            reason = _truncate(type(exc).__name__, _REASON_LENGTH)
            return Decision(
                Disposition.TRANSIENT,
                Outcome.ERROR,
                error=ErrorInfo(reason=reason, message=_truncate(str(exc), _MESSAGE_LENGTH)),
                exception=exc,
                handler_seconds=elapsed,
            )
        if not conn.in_transaction:
            # Only reachable by defeating the authorizer; the effect is already durable without its
            # inbox row. Nothing safe can be done automatically: stop the line.
            raise RuntimeError(f"handler {command.action} ended the SDK's transaction; its effect may apply twice")
        conn.execute(f"RELEASE {_SAVEPOINT}")
        return Decision(Disposition.APPLIED, Outcome.SUCCEEDED, result=result, handler_seconds=elapsed)

    def _replay(self, command: Command) -> Decision | None:
        stored = self.lookup(command.idempotency_key, command.kind)
        if stored is None:
            return None
        if stored.handler != command.action:
            # Same saga step, different handler name: the saga spec or the operator is confused. The
            # stored answer still stands (the key is the contract), but somebody should know.
            log.warning(
                "command %s for %s names handler %r but %r was recorded; replaying the recorded outcome",
                command.kind.value,
                command.idempotency_key,
                command.action,
                stored.handler,
            )
        self._conn.execute(
            "UPDATE saga_inbox SET deliveries = deliveries + 1, last_delivery_at = ?"
            " WHERE idempotency_key = ? AND kind = ?",
            (_now(), command.idempotency_key, command.kind.value),
        )
        return Decision(Disposition.REPLAYED, stored.outcome, result=stored.result, error=stored.error)

    def _record(self, command: Command, decision: Decision) -> None:
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
