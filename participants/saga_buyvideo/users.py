"""The `users` service: debits the buyer (action `debit`), refunds on compensation (`refund`).

A balance never goes below zero: the debit refuses with InsufficientFunds instead, and a refund only
ever adds money back, so it cannot fail for a business reason.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from saga_buyvideo.payload import cents, text
from saga_participants import BusinessError, Participant
from saga_protocol import Command

NAME: Final = "users"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    user_id TEXT PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS debits (
    idempotency_key TEXT PRIMARY KEY,
    saga_uid        TEXT NOT NULL,
    user_id         TEXT NOT NULL REFERENCES accounts (user_id),
    amount          INTEGER NOT NULL CHECK (amount > 0),
    video           TEXT,
    debited_at      TEXT NOT NULL,
    refunded_at     TEXT
);
"""


def debit(tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
    buyer = text(command.payload, "buyer")
    price = cents(command.payload, "price")
    row = tx.execute("SELECT balance FROM accounts WHERE user_id = ?", (buyer,)).fetchone()
    if row is None:
        raise BusinessError("UnknownUser", f"there is no account for user {buyer!r}")
    balance: int = row[0]
    if balance < price:
        raise BusinessError("InsufficientFunds", f"{buyer} has {balance} cents, the purchase costs {price}")
    tx.execute("UPDATE accounts SET balance = balance - ? WHERE user_id = ?", (price, buyer))
    # The debit row is what the refund undoes: it does not trust the payload a second time.
    tx.execute(
        "INSERT INTO debits (idempotency_key, saga_uid, user_id, amount, video, debited_at) VALUES (?, ?, ?, ?, ?, ?)",
        (
            command.idempotency_key,
            command.saga_uid,
            buyer,
            price,
            command.payload.get("video"),
            datetime.now(UTC).isoformat(),
        ),
    )
    result: dict[str, Any] = {"buyer": buyer, "debitedCents": price, "balanceCents": balance - price}
    # A step input (docs/architecture.md, "Data between steps"): the purchase this debit pays for.
    reference = (command.input or {}).get("reference")
    if reference is not None:
        result["reference"] = text(command.input or {}, "reference")
    return result


def refund(tx: sqlite3.Connection, command: Command, debited: dict[str, Any]) -> dict[str, Any]:
    row = tx.execute(
        "SELECT user_id, amount, refunded_at FROM debits WHERE idempotency_key = ?", (command.idempotency_key,)
    ).fetchone()
    if row is None:
        # The inbox says the debit was applied, so its row must exist: this is corruption, not business.
        # Raising (not BusinessError) replies `error`, and the operator retries then parks the saga.
        raise RuntimeError(f"debit {command.idempotency_key} is recorded as applied but has no debit row")
    user_id, amount, refunded_at = row
    if refunded_at is None:
        tx.execute("UPDATE accounts SET balance = balance + ? WHERE user_id = ?", (amount, user_id))
        tx.execute(
            "UPDATE debits SET refunded_at = ? WHERE idempotency_key = ?",
            (datetime.now(UTC).isoformat(), command.idempotency_key),
        )
    balance = tx.execute("SELECT balance FROM accounts WHERE user_id = ?", (user_id,)).fetchone()[0]
    refunded: dict[str, Any] = {"buyer": user_id, "refundedCents": amount, "balanceCents": balance}
    # The compensation gets its action's input and the result the debit stored: the purchase it refunds.
    reference = (command.input or {}).get("reference") or debited.get("reference")
    if reference is not None:
        refunded["reference"] = reference
    return refunded


def participant(database: str | os.PathLike[str], *, name: str = NAME, **options: Any) -> Participant:
    p = Participant(name, database=database, schema=SCHEMA, **options)
    p.action("debit")(debit)
    p.compensation("refund")(refund)
    return p
