"""The `agents` service: credits the seller's agent (action `credit`), takes it back on compensation
(`reverse-credit`).

The credit refuses an unknown or closed agent, which is how a demo saga fails at its last step and shows
two compensations in reverse order. The reversal may leave an agent's balance negative: sagas give no
isolation, so the agent may have spent the credit before the saga was undone, and a compensation cannot
fail for that reason. The negative balance is the agent's debt, visible in the ledger.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from saga_buyvideo.payload import cents, text
from saga_participants import BusinessError, Participant
from saga_protocol import Command

NAME: Final = "agents"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    status   TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    balance  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS credits (
    idempotency_key TEXT PRIMARY KEY,
    saga_uid        TEXT NOT NULL,
    agent_id        TEXT NOT NULL REFERENCES agents (agent_id),
    amount          INTEGER NOT NULL CHECK (amount > 0),
    buyer           TEXT,
    video           TEXT,
    credited_at     TEXT NOT NULL,
    reversed_at     TEXT
);
"""


def credit(tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
    agent = text(command.payload, "agent")
    price = cents(command.payload, "price")
    row = tx.execute("SELECT status, balance FROM agents WHERE agent_id = ?", (agent,)).fetchone()
    if row is None:
        raise BusinessError("UnknownAgent", f"there is no agent {agent!r}")
    status, balance = row
    if status != "open":
        raise BusinessError("AgentClosed", f"agent {agent!r} is {status} and takes no credits")
    tx.execute("UPDATE agents SET balance = balance + ? WHERE agent_id = ?", (price, agent))
    tx.execute(
        "INSERT INTO credits (idempotency_key, saga_uid, agent_id, amount, buyer, video, credited_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            command.idempotency_key,
            command.saga_uid,
            agent,
            price,
            command.payload.get("buyer"),
            command.payload.get("video"),
            datetime.now(UTC).isoformat(),
        ),
    )
    return {"agent": agent, "creditedCents": price, "balanceCents": balance + price}


def reverse_credit(tx: sqlite3.Connection, command: Command, credited: dict[str, Any]) -> dict[str, Any]:
    row = tx.execute(
        "SELECT agent_id, amount, reversed_at FROM credits WHERE idempotency_key = ?", (command.idempotency_key,)
    ).fetchone()
    if row is None:
        raise RuntimeError(f"credit {command.idempotency_key} is recorded as applied but has no credit row")
    agent, amount, reversed_at = row
    if reversed_at is None:
        # Even from a closed agent, and even below zero: see the module docstring.
        tx.execute("UPDATE agents SET balance = balance - ? WHERE agent_id = ?", (amount, agent))
        tx.execute(
            "UPDATE credits SET reversed_at = ? WHERE idempotency_key = ?",
            (datetime.now(UTC).isoformat(), command.idempotency_key),
        )
    balance = tx.execute("SELECT balance FROM agents WHERE agent_id = ?", (agent,)).fetchone()[0]
    return {"agent": agent, "reversedCents": amount, "balanceCents": balance}


def participant(database: str | os.PathLike[str], *, name: str = NAME, **options: Any) -> Participant:
    p = Participant(name, database=database, schema=SCHEMA, **options)
    p.action("credit")(credit)
    p.compensation("reverse-credit")(reverse_credit)
    return p
