"""Demo data and the ledger: what `saga-participant seed` writes and `saga-participant ledger` prints.

The money total is the sum of every user's and every agent's balance. Each saga outcome conserves it:
success moves `price` from a user to an agent; a failure compensates whatever moved. While a saga is in
flight the total can be short by its price (debited, not yet credited): compare totals when all are done.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from saga_buyvideo import SCHEMAS, database_path
from saga_participants import SqliteStore

#: Demo users and their balances in cents.
DEMO_USERS: Final = {"alice": 10_000, "bob": 500, "carol": 2_500, "dave": 0}
#: Demo agents: (status, balance in cents). `closed-agency` refuses credits, so a saga fails at the agent.
DEMO_AGENTS: Final = {"bob-agency": ("open", 0), "acme-films": ("open", 0), "closed-agency": ("closed", 0)}

_TABLES: Final = {"videos": ("purchases",), "users": ("debits", "accounts"), "agents": ("credits", "agents")}


def seed(data_dir: str | os.PathLike[str], *, reset: bool = False) -> dict[str, Any]:
    """Create the three databases with demo data. Existing rows are kept unless `reset`, which empties
    every table (inbox included) in place, so that running services keep working on the same files."""
    for service, schema in SCHEMAS.items():
        conn = SqliteStore(database_path(data_dir, service), schema=schema).connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if reset:
                for table in (*_TABLES[service], "saga_inbox"):
                    conn.execute(f"DELETE FROM {table}")
            if service == "users":
                conn.executemany("INSERT OR IGNORE INTO accounts (user_id, balance) VALUES (?, ?)", DEMO_USERS.items())
            elif service == "agents":
                conn.executemany(
                    "INSERT OR IGNORE INTO agents (agent_id, status, balance) VALUES (?, ?, ?)",
                    [(agent, status, balance) for agent, (status, balance) in DEMO_AGENTS.items()],
                )
            conn.execute("COMMIT")
        finally:
            conn.close()
    return read_ledger(data_dir)


@contextmanager
def _read_only(path: str) -> Iterator[sqlite3.Connection]:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist: run `saga-participant seed` first")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def read_ledger(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The three ledgers, the money total and a consistency check, as one JSON-able dict.

    `consistent` is true when the same sagas hold a live purchase, a live debit and a live credit: the
    state every finished saga leaves (all three, or none). It is false while a saga is in flight.
    """
    with _read_only(database_path(data_dir, "users")) as db:
        balances = dict(db.execute("SELECT user_id, balance FROM accounts ORDER BY user_id").fetchall())
        debits = [
            {"saga": s, "user": u, "cents": a, "video": v, "refunded": r is not None}
            for s, u, a, v, r in db.execute(
                "SELECT saga_uid, user_id, amount, video, refunded_at FROM debits ORDER BY debited_at"
            )
        ]
    with _read_only(database_path(data_dir, "agents")) as db:
        agents = {
            agent: {"status": status, "balance": balance}
            for agent, status, balance in db.execute("SELECT agent_id, status, balance FROM agents ORDER BY agent_id")
        }
        credits = [
            {"saga": s, "agent": a, "cents": c, "reversed": r is not None}
            for s, a, c, r in db.execute(
                "SELECT saga_uid, agent_id, amount, reversed_at FROM credits ORDER BY credited_at"
            )
        ]
    with _read_only(database_path(data_dir, "videos")) as db:
        purchases = [
            {"saga": s, "name": n, "buyer": b, "video": v, "cents": p, "state": st}
            for s, n, b, v, p, st in db.execute(
                "SELECT saga_uid, saga, buyer, video, price, state FROM purchases ORDER BY recorded_at"
            )
        ]
    live_purchases = {p["saga"] for p in purchases if p["state"] == "recorded"}
    live_debits = {d["saga"] for d in debits if not d["refunded"]}
    live_credits = {c["saga"] for c in credits if not c["reversed"]}
    users_total = sum(balances.values())
    agents_total = sum(a["balance"] for a in agents.values())
    return {
        "users": balances,
        "debits": debits,
        "agents": agents,
        "credits": credits,
        "purchases": purchases,
        "usersTotal": users_total,
        "agentsTotal": agents_total,
        "moneyTotal": users_total + agents_total,
        "completedSagas": len(live_purchases & live_debits & live_credits),
        "consistent": live_purchases == live_debits == live_credits,
    }


def format_ledger(ledger: dict[str, Any]) -> str:
    lines = ["users (balance, cents)"]
    lines += [f"  {user:<16} {balance:>10}" for user, balance in ledger["users"].items()]
    lines.append("agents (status, balance, cents)")
    lines += [f"  {agent:<16} {a['status']:<7} {a['balance']:>10}" for agent, a in ledger["agents"].items()]
    lines.append("purchases (saga, buyer, video, cents, state)")
    lines += [
        f"  {p['name']:<28} {p['buyer']:<10} {p['video']:<10} {p['cents']:>8}  {p['state']}"
        for p in ledger["purchases"]
    ] or ["  (none)"]
    lines.append("debits (user, cents, refunded)")
    lines += [
        f"  {d['user']:<16} {d['cents']:>10}  {'refunded' if d['refunded'] else ''}" for d in ledger["debits"]
    ] or ["  (none)"]
    lines.append("credits (agent, cents, reversed)")
    lines += [
        f"  {c['agent']:<16} {c['cents']:>10}  {'reversed' if c['reversed'] else ''}" for c in ledger["credits"]
    ] or ["  (none)"]
    lines.append(
        f"money total (users {ledger['usersTotal']} + agents {ledger['agentsTotal']}): {ledger['moneyTotal']} cents"
    )
    lines.append(
        f"completed sagas: {ledger['completedSagas']}; "
        + ("purchases, debits and credits agree" if ledger["consistent"] else "purchases, debits and credits DISAGREE")
    )
    return "\n".join(lines)


def dump_ledger(ledger: dict[str, Any]) -> str:
    return json.dumps(ledger, indent=2, sort_keys=True)
