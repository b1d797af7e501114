"""What a participant author writes: an action handler, a compensation handler, and BusinessError.

A handler is a plain (blocking) function that runs inside the database transaction the store opened for
the command. `tx` is that transaction's connection: a `sqlite3.Connection` with `SqliteStore`, a
`psycopg.Connection` with `PostgresStore`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias, TypeVar

from saga_protocol import Command, ErrorInfo, result_problem

#: The reason of the answer to a handler whose result breaks the protocol's limits (16 KiB, 32 levels).
RESULT_TOO_LARGE: Final = "ResultTooLarge"

REASON_LENGTH: Final = 128
MESSAGE_LENGTH: Final = 4096

Tx = TypeVar("Tx")

#: An action handler: `(tx, command) -> result`. Runs inside the open transaction; what it returns (a JSON
#: object, None meaning `{}`) is the reply's `result`. `ActionHandler[sqlite3.Connection]` names the store.
#: The data passed between steps is `command.input` (the step's evaluated input, None when it declares
#: none); `command.payload` is the saga's payload, as before.
ActionHandler: TypeAlias = Callable[[Tx, Command], Mapping[str, Any] | None]
#: A compensation handler: `(tx, command, action_result) -> result`. It also gets the stored result of the
#: action it undoes; it is only called when that action was applied (otherwise the SDK answers by itself),
#: so the result is always a dict: `{}` when the action returned nothing. `command.input` is the action's
#: input; `command.action_result` the result as the operator recorded it (None when it does not know it).
CompensationHandler: TypeAlias = Callable[[Tx, Command, dict[str, Any]], Mapping[str, Any] | None]
Handler: TypeAlias = ActionHandler[Any] | CompensationHandler[Any]


class BusinessError(Exception):
    """Raised by an action handler to refuse the command for a business reason (e.g. InsufficientFunds).

    The reply says `failed`, the outcome is stored (a redelivery gets the same answer) and nothing the
    handler wrote is kept. Never retried. A compensation must not raise it: compensations cannot fail for
    business reasons, so the SDK treats that as a programming error and replies `error` (retried).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        # Checked here, where the mistake is made, rather than when the reply fails validation later.
        if not reason or len(reason) > REASON_LENGTH or not reason[0].isupper() or not reason.isalnum():
            raise ValueError(f"a BusinessError reason is a CamelCase word of at most 128 characters, not {reason!r}")
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_info(exc: BaseException) -> ErrorInfo:
    """An unexpected exception as the reply's error: its type is the reason, its text the message."""
    return ErrorInfo(reason=truncate(type(exc).__name__, REASON_LENGTH), message=truncate(str(exc), MESSAGE_LENGTH))


class ResultTooLarge(Exception):
    """A handler returned a result over the protocol's limits: not stored, answered ResultTooLarge (an action
    `failed` with its effect rolled back, a compensation `error`). The same command would do it again."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def normalize_result(value: object) -> dict[str, Any]:
    """A handler's return value as the JSON object the reply carries. Raises ResultTooLarge for one over the
    protocol's limits, TypeError or ValueError for anything that is not a JSON object (a programming error)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"a handler returns a mapping or None, not {type(value).__name__}")
    problem = result_problem(dict(value))  # depth first: it is safe at any depth, json.dumps is not
    if problem is not None:
        raise ResultTooLarge(problem[1])
    decoded: dict[str, Any] = json.loads(json.dumps(dict(value), separators=(",", ":"), allow_nan=False))
    return decoded
