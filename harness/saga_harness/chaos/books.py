"""The books: what the three participants' SQLite databases hold, read without a participant running."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saga_buyvideo import database_path


@dataclass
class Books:
    """Everything the three participants' databases hold, read-only."""

    users: dict[str, int]
    agents: dict[str, int]
    #: service -> rows of its effect table: {key, saga, live, cents, who}
    effects: dict[str, list[dict[str, Any]]]
    #: service -> inbox rows: {key, kind, disposition, outcome, saga, deliveries}
    inbox: dict[str, list[dict[str, Any]]]

    @property
    def money(self) -> int:
        return sum(self.users.values()) + sum(self.agents.values())


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        yield conn
    finally:
        conn.close()


def read_books(data_dir: Path) -> Books:
    # key, saga, live, cents, who, when applied, when undone (ISO times from one clock: one machine)
    queries = {
        "videos": "SELECT idempotency_key, saga_uid, state = 'recorded', price, buyer, recorded_at, removed_at"
        " FROM purchases",
        "users": "SELECT idempotency_key, saga_uid, refunded_at IS NULL, amount, user_id, debited_at, refunded_at"
        " FROM debits",
        "agents": "SELECT idempotency_key, saga_uid, reversed_at IS NULL, amount, agent_id, credited_at, reversed_at"
        " FROM credits",
    }
    effects: dict[str, list[dict[str, Any]]] = {}
    inbox: dict[str, list[dict[str, Any]]] = {}
    users: dict[str, int] = {}
    agents: dict[str, int] = {}
    for service, query in queries.items():
        with _read_only(Path(database_path(data_dir, service))) as db:
            effects[service] = [
                {"key": k, "saga": s, "live": bool(live), "cents": c, "who": w, "applied": a, "undone": u}
                for k, s, live, c, w, a, u in db.execute(query)
            ]
            inbox[service] = [
                {"key": k, "kind": kind, "disposition": d, "outcome": o, "saga": s, "deliveries": n}
                for k, kind, d, o, s, n in db.execute(
                    "SELECT idempotency_key, kind, disposition, outcome, saga_uid, deliveries FROM saga_inbox"
                )
            ]
            if service == "users":
                users = dict(db.execute("SELECT user_id, balance FROM accounts"))
            elif service == "agents":
                agents = dict(db.execute("SELECT agent_id, balance FROM agents"))
    return Books(users, agents, effects, inbox)
