"""Different sagas are handled concurrently, one saga's commands in order, over a real broker.

A slow step of one saga (its handler sleeps 5 s in its PostgreSQL transaction; with SQLite, which has one
writer, a 5 s fault-injection delay before the handler) must not hold up another saga's reply, as it did
when a participant handled one record at a time. Within the slow saga, the compensation sent right after
the action must still wait for it: it undoes the applied action instead of overtaking it (a tombstone and
a refused action would mean the order was lost). And the committed offset never passes an unfinished
command: a participant stopped with the slow command in hand gets it again on restart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from participants_support import KafkaHarness, compensation_of, make_command, unique

from saga_participants import KafkaSettings, Participant, PostgresStore
from saga_participants.testing import FaultInjection
from saga_protocol import Command, Outcome, Reply

pytestmark = pytest.mark.stack

SLOW = 5.0
SCHEMA = "CREATE TABLE IF NOT EXISTS effects (idempotency_key TEXT PRIMARY KEY, undone INTEGER NOT NULL DEFAULT 0);"


@pytest.fixture
async def kafka(participants_kafka: KafkaSettings) -> AsyncIterator[KafkaHarness]:
    async with KafkaHarness(participants_kafka) as harness:
        yield harness


def sql(tx: Any, query: str, *params: Any) -> Any:
    if not isinstance(tx, sqlite3.Connection):
        query = query.replace("?", "%s")
    return tx.execute(query, params)


def participant(
    kind: str, name: str, tmp_path: Path, request: pytest.FixtureRequest, kafka: KafkaHarness, **options: Any
) -> Participant:
    """A participant whose action `work` takes SLOW seconds when the payload says {"slow": true}."""
    settings, reply = kafka.settings, kafka.reply_topic
    if kind == "postgres":
        dsn: str = request.getfixturevalue("postgres_dsn")  # one database per test: a restart finds it again
        p = Participant(name, store=PostgresStore(dsn, schema=SCHEMA), kafka=settings, reply_topic=reply, **options)
    else:
        # SQLite runs one handler at a time: the slow part is a delay before the handler, as a slow
        # dependency called first would be.
        p = Participant(
            name,
            database=tmp_path / "work.db",
            schema=SCHEMA,
            kafka=settings,
            reply_topic=reply,
            interceptors=[FaultInjection(max_delay=SLOW)],
            **options,
        )

    @p.action("work")
    def work(tx: Any, command: Command) -> dict[str, Any]:
        if kind == "postgres" and command.payload.get("slow"):
            time.sleep(SLOW)  # in the open transaction, on a connection of its own
        sql(tx, "INSERT INTO effects (idempotency_key) VALUES (?)", command.idempotency_key)
        return {"worked": True}

    @p.compensation("undo")
    def undo(tx: Any, command: Command, worked: dict[str, Any]) -> dict[str, Any]:
        sql(tx, "UPDATE effects SET undone = 1 WHERE idempotency_key = ?", command.idempotency_key)
        return {"undone": True}

    return p


def slow_payload(kind: str, name: str) -> dict[str, Any]:
    if kind == "postgres":
        return {"slow": True}
    return {"simulate": {name: {"delaySeconds": SLOW}}}


async def send(kafka: KafkaHarness, p: Participant, command: Command) -> tuple[Command, float]:
    command = kafka.with_reply_topic(command)
    await kafka.send(command, p.command_topic)
    return command, time.monotonic()


async def reply_at(kafka: KafkaHarness, command: Command) -> tuple[Reply, float]:
    reply = await kafka.reply_to(command)
    return reply, kafka.arrived[reply.message_id]


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_a_slow_saga_does_not_delay_another_and_keeps_its_own_order(
    kind: str, tmp_path: Path, kafka: KafkaHarness, request: pytest.FixtureRequest
) -> None:
    name = unique("work")
    p = await kafka.start(participant(kind, name, tmp_path, request, kafka))

    slow, slow_sent = await send(kafka, p, make_command(action="work", step="slow", payload=slow_payload(kind, name)))
    undo, _ = await send(kafka, p, compensation_of(slow, "undo"))  # the same saga: must wait for its action
    fast, fast_sent = await send(kafka, p, make_command(action="work", step="fast"))  # another saga

    fast_reply, fast_at = await reply_at(kafka, fast)
    slow_reply, slow_at = await reply_at(kafka, slow)
    undo_reply, undo_at = await reply_at(kafka, undo)
    timings = (
        f"{kind}: other saga replied after {fast_at - fast_sent:.2f}s, the slow action after "
        f"{slow_at - slow_sent:.2f}s, its compensation after {undo_at - slow_sent:.2f}s"
    )
    print(timings)

    assert fast_reply.outcome is Outcome.SUCCEEDED
    assert slow_reply.outcome is Outcome.SUCCEEDED, slow_reply  # not refused: the compensation did not overtake
    assert undo_reply.outcome is Outcome.SUCCEEDED and undo_reply.result == {"undone": True}, undo_reply
    assert slow_at - slow_sent >= SLOW - 0.5, timings
    assert fast_at - fast_sent < SLOW - 2.0, timings  # well before the slow one: it did not wait for it
    assert fast_at < slow_at - 2.0, timings
    assert undo_at >= slow_at, timings


async def test_max_in_flight_bounds_what_is_handled_at_once(
    tmp_path: Path, kafka: KafkaHarness, request: pytest.FixtureRequest
) -> None:
    """With one slot, the other saga waits for the slow one: the bound is what limits concurrency."""
    name = unique("work")
    p = await kafka.start(participant("sqlite", name, tmp_path, request, kafka, max_in_flight=1))

    slow, slow_sent = await send(
        kafka, p, make_command(action="work", step="slow", payload=slow_payload("sqlite", name))
    )
    fast, _ = await send(kafka, p, make_command(action="work", step="fast"))

    _, slow_at = await reply_at(kafka, slow)
    _, fast_at = await reply_at(kafka, fast)
    assert slow_at - slow_sent >= SLOW - 0.5
    assert fast_at >= slow_at


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_the_committed_offset_never_passes_an_unfinished_command(
    kind: str, tmp_path: Path, kafka: KafkaHarness, request: pytest.FixtureRequest
) -> None:
    """Stopped while the slow command (offset 0) is in hand and a later one (offset 1) is finished: the
    commit stays at 0, so the restarted participant gets both again; the finished one is a replay."""
    name = unique("work")
    first = await kafka.start(participant(kind, name, tmp_path, request, kafka))
    slow, _ = await send(kafka, first, make_command(action="work", step="slow", payload=slow_payload(kind, name)))
    fast, _ = await send(kafka, first, make_command(action="work", step="fast"))
    fast_reply = await kafka.reply_to(fast)
    assert not fast_reply.duplicate
    await kafka.stop(first)  # the slow command is still in hand: abandoned, not committed

    await kafka.start(participant(kind, name, tmp_path, request, kafka))
    slow_reply = await kafka.reply_to(slow)
    fast_again = (await kafka.replies_for(fast, count=2))[1]

    assert slow_reply.outcome is Outcome.SUCCEEDED
    assert fast_again.duplicate and fast_again.result == fast_reply.result
