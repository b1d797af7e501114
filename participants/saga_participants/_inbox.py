"""The inbox rules: dedupe, tombstones and stored outcomes, in the same transaction as the business effect.

One row per (idempotency key, kind) records what this participant answered the first time; every later
delivery of the same command gets that answer again without running the handler. The action and the
compensation of one step share the idempotency key ("<sagaUid>/<step>"), which is what lets a
compensation that overtook its action leave a tombstone that the late action then finds.

The rules are written once, here, against `Transaction`: one open database transaction as the rules see
it. A store (`SqliteStore`, `PostgresStore`, or your own) opens the transaction, hands it to `decide`,
and commits, or rolls back when `decide` raises `Rollback`. Everything the SDK writes for a command (the
inbox row) and everything the handler writes (the business effect) then commit or roll back together: a
crash between them cannot leave an effect without its dedupe row, which would apply it twice on
redelivery, nor a dedupe row without its effect, which would lose it. An `error` is never stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

from saga_participants._handlers import (
    MESSAGE_LENGTH,
    RESULT_TOO_LARGE,
    BusinessError,
    Handler,
    ResultTooLarge,
    error_info,
    normalize_result,
    truncate,
)
from saga_protocol import Command, CommandKind, ErrorInfo, Outcome

log = logging.getLogger(__name__)

#: Reasons carried in the result of compensations that had nothing to undo.
NOOP_ACTION_NOT_APPLIED: Final = "ActionNotApplied"
NOOP_ACTION_FAILED: Final = "ActionFailed"
#: The reason a late action is refused with.
ALREADY_COMPENSATED: Final = "AlreadyCompensated"
#: The reason a compensation that raised BusinessError is answered `error` with.
BUSINESS_ERROR_IN_COMPENSATION: Final = "BusinessErrorInCompensation"


class Disposition(StrEnum):
    """What the inbox did with one delivery of a command."""

    APPLIED = "applied"  # the handler ran and its effect committed with the inbox row
    BUSINESS_FAILED = "business-failed"  # the action raised BusinessError: nothing applied, outcome stored
    REFUSED = "refused"  # a late action after its compensation: nothing applied, refusal stored
    TOMBSTONE = "tombstone"  # a compensation before (or without) its action: recorded, nothing to undo
    NOOP = "noop"  # a compensation of an action that failed or was refused: nothing to undo
    REPLAYED = "replayed"  # a duplicate: the stored outcome, handler not run
    TRANSIENT = "transient"  # the handler raised: everything rolled back, nothing stored


@dataclass(frozen=True)
class Decision:
    """The answer to one delivery of a command; the SDK turns it into the reply."""

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

    @classmethod
    def transient(cls, exc: BaseException) -> Decision:
        """Something failed around the handler (the database itself: locked, gone): nothing was stored."""
        return cls(Disposition.TRANSIENT, Outcome.ERROR, error=error_info(exc), exception=exc)


class InboxStore(Protocol):
    """Where a participant keeps its inbox, next to its own tables: one database, one transaction.

    `apply` runs the command's handler and the inbox rules in ONE transaction and commits it, except for a
    TRANSIENT decision (the handler raised), which it rolls back: an `error` is never stored, so the next
    delivery runs the handler again. It may raise when the database itself fails; the SDK treats that
    like a transient handler failure. The SDK awaits `open()` before the first `apply` and `close()` after
    the last one; `apply` may be awaited concurrently for commands of different sagas (never for two
    commands with the same idempotency key).
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, command: Command, handler: Handler) -> Decision: ...


@dataclass(frozen=True)
class Stored:
    """One inbox row, as far as the rules need it."""

    outcome: Outcome
    handler: str
    result: dict[str, Any] | None
    error: ErrorInfo | None


class Transaction(Protocol):
    """One open transaction of a store, as the rules see it. `connection` is what handlers get as `tx`."""

    @property
    def connection(self) -> Any: ...

    def lookup(self, idempotency_key: str, kind: CommandKind) -> Stored | None: ...

    def count_delivery(self, command: Command) -> None:
        """A duplicate was answered from the stored row: deliveries + 1."""

    def record(self, command: Command, decision: Decision) -> None:
        """Store the outcome of the first delivery (never a TRANSIENT one)."""

    def run_handler(self, command: Command, call: Callable[[], object]) -> Decision:
        """Run the handler inside the transaction with `invoke`, keeping transaction control away from it.
        A BUSINESS_FAILED decision has had the handler's writes undone (a savepoint)."""


class Rollback(Exception):
    """Raised by `decide`: roll the whole transaction back and answer with the decision it carries."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.disposition)
        self.decision = decision


def invoke(call: Callable[[], object]) -> Decision:
    """Run a handler (already bound to its transaction and command) and say what it did: APPLIED with its
    result, BUSINESS_FAILED for a BusinessError, TRANSIENT for anything else it raised."""
    started = time.perf_counter()
    try:
        result = normalize_result(call())
    except ResultTooLarge as exc:
        # Not transient: the same command would return the same result. Like a business refusal, the
        # action's writes are undone and the refusal stored; a compensation is answered error instead.
        return Decision(
            Disposition.BUSINESS_FAILED,
            Outcome.FAILED,
            error=ErrorInfo(reason=RESULT_TOO_LARGE, message=truncate(exc.detail, MESSAGE_LENGTH)),
            exception=exc,
            handler_seconds=time.perf_counter() - started,
        )
    except BusinessError as exc:
        return Decision(
            Disposition.BUSINESS_FAILED,
            Outcome.FAILED,
            error=ErrorInfo(reason=exc.reason, message=truncate(exc.message, MESSAGE_LENGTH)),
            exception=exc,
            handler_seconds=time.perf_counter() - started,
        )
    except Exception as exc:
        return Decision(
            Disposition.TRANSIENT,
            Outcome.ERROR,
            error=error_info(exc),
            exception=exc,
            handler_seconds=time.perf_counter() - started,
        )
    return Decision(
        Disposition.APPLIED, Outcome.SUCCEEDED, result=result, handler_seconds=time.perf_counter() - started
    )


def decide(txn: Transaction, command: Command, handler: Handler) -> Decision:
    """The rules for one delivery, inside `txn` (docs/participants.md, "The inbox table").

    Returns the decision to commit with, or raises `Rollback` (a TRANSIENT decision: nothing is stored).
    """
    stored = txn.lookup(command.idempotency_key, command.kind)
    if stored is not None:
        return _replay(txn, command, stored)
    if command.kind is CommandKind.ACTION:
        return _action(txn, command, handler)
    return _compensation(txn, command, handler)


def _replay(txn: Transaction, command: Command, stored: Stored) -> Decision:
    if stored.handler != command.action:
        # Same saga step, different handler name: the saga spec or the operator is confused. The stored
        # answer still stands (the key is the contract), but somebody should know.
        log.warning(
            "command %s for %s names handler %r but %r was recorded; replaying the recorded outcome",
            command.kind.value,
            command.idempotency_key,
            command.action,
            stored.handler,
        )
    txn.count_delivery(command)
    return Decision(Disposition.REPLAYED, stored.outcome, result=stored.result, error=stored.error)


def _action(txn: Transaction, command: Command, handler: Handler) -> Decision:
    if txn.lookup(command.idempotency_key, CommandKind.COMPENSATION) is not None:
        # The compensation overtook this action and left a tombstone (it cannot be a real undo: that needs
        # an applied action, which would have been replayed). Applying now would leave an effect that
        # nobody will ever compensate: refuse, and store the refusal so every redelivery gets the same.
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
        txn.record(command, decision)
        return decision
    decision = txn.run_handler(command, lambda: handler(txn.connection, command))  # type: ignore[call-arg]
    if decision.disposition is Disposition.TRANSIENT:
        raise Rollback(decision)
    txn.record(command, decision)
    return decision


def _compensation(txn: Transaction, command: Command, handler: Handler) -> Decision:
    action = txn.lookup(command.idempotency_key, CommandKind.ACTION)
    if action is None:
        # Commutativity: the compensation arrived first (or the action never will). Record a tombstone
        # so that the late action is refused, and succeed: there is nothing to undo.
        decision = Decision(Disposition.TOMBSTONE, Outcome.SUCCEEDED, result={"noop": NOOP_ACTION_NOT_APPLIED})
    elif action.outcome is Outcome.FAILED:
        # The action applied nothing (business failure or refusal): undoing it is a no-op.
        decision = Decision(Disposition.NOOP, Outcome.SUCCEEDED, result={"noop": NOOP_ACTION_FAILED})
    else:
        action_result = action.result or {}
        decision = txn.run_handler(command, lambda: handler(txn.connection, command, action_result))  # type: ignore[call-arg]
        if decision.disposition is Disposition.BUSINESS_FAILED and isinstance(decision.exception, ResultTooLarge):
            # Its undoing cannot be recorded with a result it cannot carry: roll it back, answer error.
            log.error(
                "compensation %s for %s returned a result over the protocol's limits (%s); replying error "
                "ResultTooLarge, nothing stored. Fix the handler.",
                command.action,
                command.idempotency_key,
                decision.exception.detail,
            )
            raise Rollback(
                Decision(
                    Disposition.TRANSIENT,
                    Outcome.ERROR,
                    error=decision.error,
                    exception=decision.exception,
                    handler_seconds=decision.handler_seconds,
                )
            )
        if decision.disposition is Disposition.BUSINESS_FAILED:
            # A compensation that "fails for a business reason" would strand the saga half-undone. It is a
            # bug in the participant: log it loudly and let the operator retry it.
            assert decision.error is not None
            log.error(
                "compensation %s for %s raised BusinessError %s: compensations cannot fail for business "
                "reasons; replying error so that it is retried. Fix the handler.",
                command.action,
                command.idempotency_key,
                decision.error.reason,
            )
            raise Rollback(
                Decision(
                    Disposition.TRANSIENT,
                    Outcome.ERROR,
                    error=ErrorInfo(
                        reason=BUSINESS_ERROR_IN_COMPENSATION,
                        message=truncate(f"{decision.error.reason}: {decision.error.message}", MESSAGE_LENGTH),
                    ),
                    exception=decision.exception,
                    handler_seconds=decision.handler_seconds,
                )
            )
        if decision.disposition is Disposition.TRANSIENT:
            raise Rollback(decision)
    txn.record(command, decision)
    return decision
