"""The `videos` service: records a purchase (action `record-purchase`), removes it on compensation
(`remove-purchase`).

A semantic lock (sagas give no isolation, see docs/participants.md): the purchase row exists from the
moment this step runs, while the saga may still be debiting the buyer or fail later. The unique index on
live purchases makes a second saga buying the same video for the same buyer fail here (AlreadyPurchased)
instead of charging twice, even while the first saga is still in flight. A removed purchase keeps its
row, for the audit trail, and no longer locks anything.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from saga_buyvideo.payload import cents, text
from saga_participants import BusinessError, Participant
from saga_protocol import Command

NAME: Final = "videos"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS purchases (
    idempotency_key TEXT PRIMARY KEY,
    saga_uid        TEXT NOT NULL,
    saga            TEXT NOT NULL,
    buyer           TEXT NOT NULL,
    video           TEXT NOT NULL,
    price           INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('recorded', 'removed')),
    recorded_at     TEXT NOT NULL,
    removed_at      TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS purchases_one_live ON purchases (buyer, video) WHERE state = 'recorded';
"""


def record_purchase(tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
    buyer = text(command.payload, "buyer")
    video = text(command.payload, "video")
    price = cents(command.payload, "price")
    owner = tx.execute(
        "SELECT saga FROM purchases WHERE buyer = ? AND video = ? AND state = 'recorded'", (buyer, video)
    ).fetchone()
    if owner is not None:
        raise BusinessError("AlreadyPurchased", f"{buyer} already bought {video} (saga {owner[0]})")
    tx.execute(
        "INSERT INTO purchases (idempotency_key, saga_uid, saga, buyer, video, price, state, recorded_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 'recorded', ?)",
        (
            command.idempotency_key,
            command.saga_uid,
            f"{command.saga_namespace}/{command.saga_name}",
            buyer,
            video,
            price,
            datetime.now(UTC).isoformat(),
        ),
    )
    # The purchase's id, for the steps after this one (a templated saga passes it to the debit as its reference):
    # derived from the idempotency key, so every attempt and every replay names the same purchase.
    purchase_id = "pur-" + hashlib.sha256(command.idempotency_key.encode()).hexdigest()[:16]
    return {"buyer": buyer, "video": video, "priceCents": price, "purchaseId": purchase_id}


def remove_purchase(tx: sqlite3.Connection, command: Command, recorded: dict[str, Any]) -> dict[str, Any]:
    row = tx.execute(
        "SELECT buyer, video FROM purchases WHERE idempotency_key = ?", (command.idempotency_key,)
    ).fetchone()
    if row is None:
        raise RuntimeError(f"purchase {command.idempotency_key} is recorded as applied but has no purchase row")
    tx.execute(
        "UPDATE purchases SET state = 'removed', removed_at = coalesce(removed_at, ?) WHERE idempotency_key = ?",
        (datetime.now(UTC).isoformat(), command.idempotency_key),
    )
    return {"buyer": row[0], "video": row[1], "removed": True}


def participant(database: str | os.PathLike[str], *, name: str = NAME, **options: Any) -> Participant:
    p = Participant(name, database=database, schema=SCHEMA, **options)
    p.action("record-purchase")(record_purchase)
    p.compensation("remove-purchase")(remove_purchase)
    return p
